"""Epoch seconds of CE, the dual branch and CSA on CIFAR-10-LT (rho 100) / ResNet-32, eager against
the speed switches (issue 15): torch.compile, bf16 autocast, channels-last, a fused optimizer, and
CSA's two branches in one forward.

Each (method, variant) is a Trainer on the shipped Table 2 config; ``--warmup`` steps run first
(compilation, CUDA-graph recording, CSA's bank filled), then ``--steps`` steps are timed through
the engine's own ``_train_epoch`` (the device synchronised before and after) and scaled to a full
epoch. ``--steps 0`` times whole epochs. CSA runs with delta = 0 and no warm-up, so extraction,
pushes and fusion happen every step, as in its steady state (see csa_cost.py).

    python benchmarks/gpu_epoch.py                        # on a GPU: every variant, whole epochs
    python benchmarks/gpu_epoch.py --steps 4 --warmup 1 --variants eager   # a short CPU check
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from tailshift.config import build_config, config_path, read_yaml
from tailshift.data.build import PreparedData, prepare_data
from tailshift.engine import Trainer, versions
from tailshift.optim import build_optimizer

CONFIG = "table2/cifar10-lt_ce"
METHODS = {
    "CE": ["method.name=ce"],
    "dual": ["method.name=dual"],
    "CSA": ["method.name=csa", "method.params={warmup_epochs: 0, delta: 0.0}"],
    "CSA joint": ["method.name=csa", "method.params={warmup_epochs: 0, delta: 0.0, joint_forward: true}"],
}
EAGER = ["train.compile=off", "train.amp=off", "train.fused_optimizer=off"]
VARIANTS = {
    "eager": EAGER,
    "amp": [*EAGER, "train.amp=bf16", "train.fused_optimizer=on"],
    "compiled": ["train.compile=default", "train.amp=bf16", "train.fused_optimizer=on"],
    "graphs": ["train.compile=reduce-overhead", "train.amp=bf16", "train.fused_optimizer=on"],
}


def config(overrides: list[str]):
    return build_config(read_yaml(config_path(CONFIG)), [*overrides, "progress=false", "train.checkpoint=false",
                                                         "output=/tmp/tailshift-gpu-epoch"])


def prepare(overrides: list[str], warmup: int, data: PreparedData):
    """A trainer on ``data`` with its stage, samplers and the config's optimizer, warmed up by ``warmup`` steps."""
    cfg = config(overrides)
    torch._dynamo.reset()  # each variant compiles afresh, not on the previous variant's cache (as tests/test_speed.py)
    trainer = Trainer(cfg, data)
    stage = trainer.method.stages()[0]
    trainer.method.begin_stage(stage, True)
    optimizer = build_optimizer(trainer.method.trainable_parameters(stage), stage.lr or cfg.train.optim.lr,
                                cfg.train.optim, trainer.speed.fused_optimizer)  # as engine.Trainer._fit
    samplers = trainer._samplers(stage, 0)
    steps_per_epoch = trainer.world.steps(len(samplers[stage.driver]), cfg.train.batch_size)
    started = time.perf_counter()
    if warmup > 0:  # _train_epoch divides by its step count
        trainer._train_epoch(stage, 0, 0, samplers, warmup, optimizer)
        sync()
    return trainer, stage, samplers, optimizer, steps_per_epoch, time.perf_counter() - started


def epoch_seconds(prepared, steps: int) -> float:
    trainer, stage, samplers, optimizer, steps_per_epoch, _ = prepared
    steps = steps or steps_per_epoch
    sync()
    start = time.perf_counter()
    trainer._train_epoch(stage, 0, 1, samplers, steps, optimizer)
    sync()
    return (time.perf_counter() - start) / steps * steps_per_epoch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def render(results: dict, variants: list[str]) -> str:
    """The markdown table: seconds per epoch of each variant, eager over each other variant, and each
    method over the dual branch under the last variant."""
    columns = ([f"{v} s/epoch" for v in variants] + [f"eager / {v}" for v in variants[1:]]
               + [f"× dual ({variants[-1]})"])
    lines = ["| Method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method, row in results.items():
        eager = row[variants[0]]["epoch_s"]
        dual = results.get("dual", {}).get(variants[-1], {}).get("epoch_s", math.nan)
        cells = ([f"{row[v]['epoch_s']:.2f}" for v in variants] + [f"{eager / row[v]['epoch_s']:.2f}" for v in variants[1:]]
                 + [f"{row[variants[-1]]['epoch_s'] / dual:.2f}"])
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=0, help="timed steps, scaled to an epoch (0: a whole epoch)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation, graphs, bank)")
    parser.add_argument("--note", default="", help="a line on the machine, written with the table")
    parser.add_argument("--out", default=None, help="results path without suffix (default: by device)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    variants = args.variants.split(",")
    data = prepare_data(config([]).data)  # read once: the methods and variants change no data setting
    results = {}
    for method in args.methods.split(","):
        for variant in variants:
            prepared = prepare([*METHODS[method], *VARIANTS[variant]], args.warmup, data)
            seconds = epoch_seconds(prepared, args.steps)
            results.setdefault(method, {})[variant] = {"epoch_s": seconds, "warmup_s": prepared[-1],
                                                       "steps_per_epoch": prepared[4],
                                                       "speed": vars(prepared[0].speed)}
            print(f"{method:10s} {variant:9s} {seconds:8.2f} s / epoch (warm-up {prepared[-1]:.1f} s)", flush=True)
    table = render(results, variants)
    print(f"\ndevice: {device}\n\n{table}")
    name = "gpu_epoch_" + ("cuda" if cuda else "cpu")
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/gpu_epoch.py {' '.join(sys.argv[1:])}".strip()
    out.with_suffix(".json").write_text(json.dumps({"device": device, "note": args.note, "command": command,
                                                    "versions": versions(), "args": vars(args),
                                                    "results": results}, indent=1))
    out.with_suffix(".md").write_text(
        f"# Epoch seconds, eager vs the speed switches (CIFAR-10-LT rho 100, ResNet-32, batch 128)\n\n"
        f"Device: {device}. {args.note}\nCommand: `{command}`.\n\n{table}\n\n"
        "Issue 15's target on an H100-class GPU: CSA <= 0.6 s per epoch and <= 1.05 x the dual branch.\n")


if __name__ == "__main__":
    main()
