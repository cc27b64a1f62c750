"""One LeNet-2d training step on CPU: plain modules vs the hand-written path.

A step is what the engine does per batch: forward of the backbone and a
``Linear(2, 10)`` head, cross-entropy, backward, SGD step; one thread,
channels-last model and batch (as ``Trainer`` sets them), batch 128, 28 x 28.
"reference" runs ``LeNet2d`` with ``use_fast_path = False``, i.e. the plain
``nn.Conv2d -> nn.MaxPool2d -> nn.ReLU`` stages; "new" runs the default path
(``tailshift.models.ops``). Both share nothing but the initial weights.

Repeats of ``--steps`` steps alternate between the two variants so that load
from other processes hits both alike; the table reports the median (and the
minimum) over repeats of the wall-clock and the process CPU time per step.

    python benchmarks/lenet_step.py            # writes benchmarks/results/lenet_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from tailshift.models.lenet import LeNet2d

from report import cpu_model

VARIANTS = ("reference", "new")


def make_step(in_channels: int, fast: bool, batch: int, image_size: int, seed: int = 0):
    torch.manual_seed(seed)
    backbone = LeNet2d(in_channels=in_channels, image_size=image_size)
    backbone.use_fast_path = fast
    head = nn.Linear(backbone.out_dim, 10)
    model = nn.ModuleDict({"backbone": backbone, "head": head}).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, in_channels, image_size, image_size, generator=gen)
    x[: batch // 8] = 0  # some all-zero images: ties in every pooling window
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(head(backbone(x)), y)
        loss.backward()
        optimizer.step()

    def grads() -> list[torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(backbone(x)), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    return step, grads


def max_grad_difference(in_channels: int, batch: int, image_size: int) -> float:
    """Largest |new - reference| over all parameter gradients, relative to the gradient's max."""
    _, ref = make_step(in_channels, False, batch, image_size)
    _, new = make_step(in_channels, True, batch, image_size)
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(new(), ref()))


def bench(in_channels: int, args) -> dict:
    steps = {v: make_step(in_channels, v == "new", args.batch, args.image_size)[0] for v in VARIANTS}
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    wall = {v: [] for v in VARIANTS}
    cpu = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for v, fn in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                fn()
            wall[v].append((time.perf_counter() - w0) / args.steps * 1e3)
            cpu[v].append((time.process_time() - c0) / args.steps * 1e3)
    out = {}
    for v in VARIANTS:
        out[v] = {
            "wall_ms_median": statistics.median(wall[v]),
            "wall_ms_min": min(wall[v]),
            "cpu_ms_median": statistics.median(cpu[v]),
            "wall_ms_repeats": wall[v],
            "cpu_ms_repeats": cpu[v],
        }
    out["speedup_wall_median"] = out["reference"]["wall_ms_median"] / out["new"]["wall_ms_median"]
    out["speedup_cpu_median"] = out["reference"]["cpu_ms_median"] / out["new"]["cpu_ms_median"]
    out["max_relative_grad_difference"] = max_grad_difference(in_channels, args.batch, args.image_size)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=200, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lenet_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {str(c): bench(c, args) for c in args.channels}

    print(f"LeNet-2d training step, batch {args.batch}, {args.image_size}x{args.image_size}, "
          f"{args.threads} thread(s), channels-last; median of {args.repeats} x {args.steps} steps\n")
    print("| channels | reference ms/step | new ms/step | speedup | reference CPU ms | new CPU ms "
          "| max rel. grad diff |")
    print("|---|---|---|---|---|---|---|")
    for c, r in results.items():
        ref, new = r["reference"], r["new"]
        print(f"| {c} | {ref['wall_ms_median']:.2f} (min {ref['wall_ms_min']:.2f}) | {new['wall_ms_median']:.2f} "
              f"(min {new['wall_ms_min']:.2f}) | {r['speedup_wall_median']:.2f}x | {ref['cpu_ms_median']:.2f} | "
              f"{new['cpu_ms_median']:.2f} | {r['max_relative_grad_difference']:.1e} |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
