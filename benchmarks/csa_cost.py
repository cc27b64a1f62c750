"""Training cost of CSA vs its dual-branch baseline vs single-branch CE (paper Table 12).

Per-epoch time = median time per step (over repeats of ``--steps`` steps, after
warm-up steps) x steps per epoch of the uniform-driven epoch. The "x dual" ratio
is the median over repeats of each method's time over the dual branch's time in
the same round (methods run round-robin), with its quartiles: pairing within a
round cancels the machine's drift, which on a shared CPU moves whole runs by up
to 25 %. CSA runs with
delta = 0 and no warm-up so that context extraction, bank pushes and fusion
run on every step, as in CSA's steady state (with delta = 0.8 a fresh network
pushes nothing and fusion would be skipped, which would flatter CSA).

    python benchmarks/csa_cost.py                  # LeNet-2d on CFashion-LT and ResNet-32 on CIFAR-10-LT
    python benchmarks/csa_cost.py --models lenet2d # one study only
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from tailshift.config import config_path, load_config
from tailshift.engine import Trainer, versions

STUDIES = {
    "lenet2d": ("table1/cfashion-lt_ce", []),
    "resnet32": ("table1/cfashion-lt_ce", [
        "data.dataset=cifar10-npz", "data.context.enabled=false", "data.longtail.n_max=5000", "model.name=resnet32",
        "data.augment=crop_flip", "data.mean=[0.4914, 0.4822, 0.4465]", "data.std=[0.2023, 0.1994, 0.2010]",
        "train.optim.momentum=0.9", "train.optim.weight_decay=2e-4"]),
}
METHODS = {
    "CE (single branch)": ["method.name=ce"],
    "dual branch": ["method.name=dual"],
    "CSA": ["method.name=csa", "method.params={warmup_epochs: 0, delta: 0.0}"],
    # train-mode CAM reuses the training forward's feature map: no extra backbone pass
    # (identical to eval mode for backbones without batch norm, e.g. LeNet-2d)
    "CSA, cam_mode=train": ["method.name=csa", "method.params={warmup_epochs: 0, delta: 0.0, cam_mode: train}"],
}


def prepare(config: str, overrides: list[str], warmup: int):
    """A trainer with its stage, samplers and optimizer, warmed up (bank full for CSA)."""
    cfg = load_config(config_path(config), [*overrides, "progress=false", "train.checkpoint=false",
                                            "output=/tmp/tailshift-bench"])
    trainer = Trainer(cfg)
    stage = trainer.method.stages()[0]
    trainer.method.begin_stage(stage, True)
    optimizer = torch.optim.SGD(trainer.method.trainable_parameters(stage), lr=0.01, momentum=0.9)
    samplers = trainer._samplers(stage, 0)
    trainer._train_epoch(stage, 0, 0, samplers, warmup, optimizer)
    return trainer, stage, samplers, optimizer


def time_steps(prepared, steps: int) -> float:
    trainer, stage, samplers, optimizer = prepared
    sync()
    start = time.perf_counter()
    trainer._train_epoch(stage, 0, 0, samplers, steps, optimizer)
    sync()
    return (time.perf_counter() - start) / steps


def time_methods(config: str, extra: list[str], steps: int, repeats: int, warmup: int) -> dict:
    """Methods are timed round-robin (one repeat of each in turn), so machine drift hits all alike."""
    prepared = {name: prepare(config, [*extra, *overrides], warmup) for name, overrides in METHODS.items()}
    times = {name: [] for name in METHODS}
    for _ in range(repeats):
        for name in METHODS:
            times[name].append(time_steps(prepared[name], steps))
    out = {}
    for name, ts in times.items():
        trainer = prepared[name][0]
        per_step = statistics.median(ts)
        steps_per_epoch = math.ceil(len(trainer.data.train) / trainer.cfg.train.batch_size)
        paired = [t / d for t, d in zip(ts, times["dual branch"])]
        quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
        out[name] = {"per_step_ms": per_step * 1000, "steps_per_epoch": steps_per_epoch,
                     "epoch_s": per_step * steps_per_epoch, "repeats_ms": [t * 1000 for t in ts],
                     "x_dual_paired": {"median": statistics.median(paired), "q1": quartiles[0], "q3": quartiles[2]}}
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(STUDIES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "csa_cost"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for model in args.models.split(","):
        config, extra = STUDIES[model]
        results[model] = time_methods(config, extra, args.steps, args.repeats, args.warmup)
    lines = ["| Backbone (data) | Method | ms / step | s / epoch | × CE | × dual (paired, quartiles) |",
             "|---|---|---|---|---|---|"]
    for model, rows in results.items():
        ce = rows["CE (single branch)"]["epoch_s"]
        for name, r in rows.items():
            x = r["x_dual_paired"]
            lines.append(f"| {model} | {name} | {r['per_step_ms']:.1f} | {r['epoch_s']:.2f} | "
                         f"{r['epoch_s'] / ce:.2f} | {x['median']:.2f} ({x['q1']:.2f}–{x['q3']:.2f}) |")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    table = "\n".join(lines)
    print(f"device: {device}\n\n{table}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"device": device, "versions": versions(), "args": vars(args),
                                                    "results": results}, indent=1))
    out.with_suffix(".md").write_text(
        f"# CSA training cost (paper Table 12)\n\nDevice: {device}. Command: `python benchmarks/csa_cost.py "
        f"{' '.join(sys.argv[1:])}`.\n\n{table}\n\n"
        "Paper (RTX 3090, CIFAR-100-LT, ResNet-32): CE 2.04 s, dual 2.38 s, CSA 2.98 s per epoch "
        "(CSA = 1.25 x dual).\n")


if __name__ == "__main__":
    main()
