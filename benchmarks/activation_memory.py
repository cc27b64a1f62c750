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

    python benchmarks/activation_memory.py        # about 1-2 minutes on 2 busy cores
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from report import write_report

from tailshift.data.pipeline import Batch
from tailshift.methods import METHODS
from tailshift.methods.base import StepContext
from tailshift.models import create_model

MIB = 1 << 20


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


def measure(model: str, method: str, batch: int, classes: int) -> dict:
    torch.manual_seed(0)
    backbone = create_model(model)
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
    trainable = sum(p.numel() * p.element_size() for p in m.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in m.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in m.buffers())
    bank = sum(t.numel() * t.element_size() for t in (m.bank._images, m.bank._masks)) if getattr(m, "bank", None) else 0
    input_bytes = sum(b.x.numel() * b.x.element_size() for b in inputs.values())
    state = 3 * trainable + frozen + buffers
    total = state + activations + input_bytes + bank
    return {"model": model, "method": method, "batch_per_process": batch,
            "state_mib": round(state / MIB), "activations_mib": round(activations / MIB),
            "inputs_mib": round(input_bytes / MIB), "bank_mib": round(bank / MIB), "total_mib": round(total / MIB)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--models", default="resnet10,resnet50")
    p.add_argument("--methods", default="ce,csa")
    p.add_argument("--output", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    rows = [measure(model, method, args.batch, 1000) for model in args.models.split(",")
            for method in args.methods.split(",")]
    lines = ["| Backbone | Method | Batch / process | Model state (MiB) | Saved activations | Inputs | CSA bank | "
             "Total (MiB) |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['batch_per_process']} | {r['state_mib']} | {r['activations_mib']} | "
              f"{r['inputs_mib']} | {r['bank_mib']} | {r['total_mib']} |" for r in rows]
    note = ("1000 classes, 224 x 224, float32, channels-last; model state = parameters + gradients + momentum + "
            "buffers. Add the CUDA context and allocator overhead on a GPU (not measurable here).")
    write_report(args.output, "activation_memory", "Device memory per training process (estimated on CPU)", note,
                 lines, {"rows": rows})

if __name__ == "__main__":
    main()
