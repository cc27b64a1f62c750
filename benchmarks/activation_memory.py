"""Device memory of one training process, estimated on the CPU: what a GPU must hold per process.

For each backbone and method, one training step at the per-process batch (``--batch``,
default 32 = the paper's global 256 over 8 GPUs) on 224 x 224 images, counted exactly:

* model state: parameters, their gradients and SGD's momentum (3 x the trainable
  parameters) plus buffers;
* activations: every tensor autograd saves for the backward pass of the step (unique
  storages, through ``torch.autograd.graph.saved_tensors_hooks``), the input batches, and
  for CSA the context bank (images and masks of one batch).

Not counted (they exist on a GPU only, so this machine cannot measure them): the CUDA
context (~0.3-0.5 GiB), cuDNN workspaces and the caching allocator's fragmentation, which
usually add 10-30 % to the activations. CSA's step is measured with the bank full and
fusion on (its steady state).

``--tunes`` measures each ``model.tune`` mode (a frozen body saves no activations for its own
backward, so the mode sets what a step holds); weights are random, which changes no byte. timm and
open_clip import torchvision: where the installed torchvision was built for another torch (PyPI's
CUDA build beside a CPU torch), ``import_torchvision`` declares the schemas of its two compiled
detection ops through the tests' ``conftest.import_real``; classification models never call them.

    python benchmarks/activation_memory.py        # about 1-2 minutes on 2 busy cores
    python benchmarks/activation_memory.py --models timm:vit_base_patch16_224 --methods ce --batch 8 \
        --tunes full,linear,bitfit,vpt_shallow,vpt_deep,lora,adapter,adaptformer,ssf --name activation_memory_vit-b16
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from report import write_report

from tailshift.data.pipeline import Batch
from tailshift.methods import METHODS
from tailshift.methods.base import StepContext
from tailshift.models import create_model
from tailshift.models.tuning import lift_width

MIB = 1 << 20
WIDTH_MODES = ("lora", "adapter", "adaptformer")  # the modes model.tune_dim sizes


def import_torchvision() -> None:
    """torchvision (which timm and open_clip import) through the tests' ``conftest.import_real``: beside a torch
    it was not built for, it declares the schemas of torchvision's two compiled detection ops first."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import import_real

    import_real("torchvision")


def saved_bytes(step) -> int:
    """Bytes of the unique storages autograd saves while ``step()`` runs (its graph kept alive)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(storages.values())


def measure(model: str, method: str, batch: int, classes: int, tune: str = "full") -> dict:
    torch.manual_seed(0)
    backbone = create_model(model, tune=tune, num_classes=classes)
    params = {"warmup_epochs": 0, "delta": 0.0} if method == "csa" else {}
    counts = np.full(classes, 100)
    m = METHODS.get(method)(backbone, classes, counts, 90, params).to(memory_format=torch.channels_last)
    m.train()
    stage = m.stages()[0]

    def batches():
        x = torch.rand(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (batch,))
        return {name: Batch(x.clone(), y, torch.arange(batch), True) for name in stage.streams}

    ctx = StepContext(stage, 0, 0, 0, torch.Generator().manual_seed(0))
    with torch.no_grad():  # fills CSA's bank (delta 0: every sample enters); nothing kept
        m.training_step(batches(), ctx)
    inputs = batches()
    activations = saved_bytes(lambda: m.training_step(inputs, ctx).loss)
    trainable_count = sum(p.numel() for p in m.parameters() if p.requires_grad)
    trainable = sum(p.numel() * p.element_size() for p in m.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in m.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in m.buffers())
    bank = sum(t.numel() * t.element_size() for t in (m.bank._images, m.bank._masks)) if getattr(m, "bank", None) else 0
    input_bytes = sum(b.x.numel() * b.x.element_size() for b in inputs.values())
    state = 3 * trainable + frozen + buffers
    total = state + activations + input_bytes + bank
    # the bottleneck width / LoRA rank the tuned model was built with: LIFT's rule from the blocks before tuning
    width = lift_width(classes, len(create_model(model).tunable_blocks())) if tune in WIDTH_MODES else None
    return {"model": model, "method": method, "tune": tune, "tune_dim": width, "batch_per_process": batch,
            "trainable_parameters": trainable_count, "state_mib": round(state / MIB),
            "activations_mib": round(activations / MIB), "activations_per_image_mib": round(activations / batch / MIB, 2),
            "inputs_mib": round(input_bytes / MIB), "bank_mib": round(bank / MIB), "total_mib": round(total / MIB)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--models", default="resnet10,resnet50")
    p.add_argument("--methods", default="ce,csa")
    p.add_argument("--tunes", default="full", help="model.tune modes, comma-separated (models/tuning.py)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--name", default="activation_memory", help="the result files' name in --output")
    p.add_argument("--output", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(max(1, args.threads))
    if any(model.startswith(("timm:", "clip:")) for model in args.models.split(",")):
        import_torchvision()
    rows = []
    for model in args.models.split(","):
        for method in args.methods.split(","):
            for tune in args.tunes.split(","):
                rows.append(measure(model, method, args.batch, args.classes, tune))
                print(rows[-1], flush=True)
    lines = ["| Backbone | Method | Tune | Trainable parameters | Batch / process | Model state (MiB) | "
             "Saved activations | per image | Inputs | CSA bank | Total (MiB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['tune']} | {r['trainable_parameters']:,} | {r['batch_per_process']} | "
              f"{r['state_mib']} | {r['activations_mib']} | {r['activations_per_image_mib']} | {r['inputs_mib']} | "
              f"{r['bank_mib']} | {r['total_mib']} |" for r in rows]
    widths = sorted({r["tune_dim"] for r in rows if r["tune_dim"] is not None})
    tuned = (f" (bottleneck width and LoRA rank {', '.join(map(str, widths))}: LIFT's rule for the class and block "
             "counts; 10 VPT prompt tokens)") if widths else ""
    note = (f"{args.classes} classes, 224 x 224, float32, channels-last, random weights; trainable parameters: the "
            f"backbone's under the tune mode{tuned} plus the heads; model state = parameters + gradients and SGD momentum of "
            "the trainable ones + buffers. Add the CUDA context and allocator overhead on a GPU (not measurable here).")
    write_report(args.output, "activation_memory", "Device memory per training process (estimated on CPU)", note,
                 lines, {"rows": rows}, file_name=args.name)

if __name__ == "__main__":
    main()
