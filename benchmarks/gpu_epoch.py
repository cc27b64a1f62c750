"""Epoch seconds of CE, the dual branch and CSA on CIFAR-10-LT (rho 100) / ResNet-32, eager against
the speed switches (issue 15): torch.compile, bf16 autocast, channels-last, a fused optimizer, and
CSA's two branches in one forward.

Each (method, variant) is a Trainer on the shipped Table 2 config. A whole epoch runs first, untimed
(compilation, the tail batch's graph, CUDA-graph recordings, CSA's bank filled); then the epoch's
full batches (96 of CIFAR-10-LT's 97 steps: the 118-row tail batch is left out, so no new shape
lands in the timed region) are timed through the engine's own ``_train_epoch``, the device
synchronised before and after, ``--repeats`` times; the table reports the median, as measured, not
scaled from a few steps. Dynamo's graph count is logged before and after the timed repeats: a
graph compiled while timing would show there. CSA runs with delta = 0 and no warm-up, so
extraction, pushes and fusion happen every step, as in its steady state (see csa_cost.py).

    python benchmarks/gpu_epoch.py                        # on a GPU: every variant, whole epochs
    python benchmarks/gpu_epoch.py --steps 2 --warmup 1 --repeats 1 --variants eager   # a short CPU check
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from tailshift.config import config_path, load_config
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
    return load_config(config_path(CONFIG), [*overrides, "progress=false", "train.checkpoint=false",
                                             "output=/tmp/tailshift-gpu-epoch"])


@dataclass
class Prepared:
    trainer: Trainer
    stage: object
    samplers: dict
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    full_steps: int  # the epoch's full batches (its last one may be partial)
    warmup_s: float


def prepare(overrides: list[str], warmup: int, data: PreparedData):
    """A trainer on ``data`` with its stage, samplers and the config's optimizer, warmed up by ``warmup``
    steps (0: a whole epoch, the tail batch included)."""
    cfg = config(overrides)
    torch._dynamo.reset()  # each variant compiles afresh, not on the previous variant's cache (as tests/test_speed.py)
    trainer = Trainer(cfg, data)
    stage = trainer.method.stages()[0]
    trainer.method.begin_stage(stage, True)
    optimizer = build_optimizer(trainer.method.trainable_parameters(stage), stage.lr or cfg.train.optim.lr,
                                cfg.train.optim, trainer.speed.fused_optimizer)  # as engine.Trainer._fit
    samplers = trainer._samplers(stage, 0)
    draws = len(samplers[stage.driver])
    steps_per_epoch = trainer.world.steps(draws, cfg.train.batch_size)
    sync()
    started = time.perf_counter()
    trainer._train_epoch(stage, 0, 0, samplers, warmup or steps_per_epoch, optimizer)
    sync()
    return Prepared(trainer, stage, samplers, optimizer, steps_per_epoch, draws // cfg.train.batch_size,
                    time.perf_counter() - started)


def graphs() -> int:
    """Graphs dynamo has compiled in this process since the last reset."""
    return int(counters["stats"]["unique_graphs"])


def timed_epochs(prepared: Prepared, steps: int, repeats: int) -> list[float]:
    """Seconds of ``steps`` full-batch steps (0: every full batch of an epoch), ``repeats`` times."""
    steps = steps or prepared.full_steps
    out = []
    for repeat in range(repeats):
        sync()
        start = time.perf_counter()
        prepared.trainer._train_epoch(prepared.stage, 0, 1 + repeat, prepared.samplers, steps, prepared.optimizer)
        sync()
        out.append(time.perf_counter() - start)
    return out


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


def measure(method: str, variant: str, data: PreparedData, steps: int, warmup: int, repeats: int,
            overrides: list[str] = ()) -> dict:
    """One (method, variant): its warm-up, the median of its timed repeats and dynamo's graph counts."""
    prepared = prepare([*overrides, *METHODS[method], *VARIANTS[variant]], warmup, data)
    before = graphs()
    seconds = timed_epochs(prepared, steps, repeats)
    return {"epoch_s": statistics.median(seconds), "repeats_s": seconds, "warmup_s": prepared.warmup_s,
            "timed_steps": steps or prepared.full_steps, "steps_per_epoch": prepared.steps_per_epoch,
            "graphs_after_warmup": before, "graphs_compiled_while_timed": graphs() - before,
            "speed": prepared.trainer.speed.record(), "backends": prepared.trainer.backends}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=0, help="timed steps per repeat (0: every full batch of an epoch)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (0: a whole epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the table shows their median")
    parser.add_argument("--note", default="", help="a line on the machine, written with the table")
    parser.add_argument("--out", default=None, help="results path without suffix (default: by device)")
    parser.add_argument("overrides", nargs="*", help="key=value applied to the config of every variant "
                                                     "(e.g. data.longtail.n_max=50 for a quick check)")
    args = parser.parse_args(argv)
    for name in ("steps", "warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    variants = args.variants.split(",")
    data = prepare_data(config(args.overrides).data)  # read once: the methods and variants change no data setting
    results = {}
    for method in args.methods.split(","):
        for variant in variants:
            row = measure(method, variant, data, args.steps, args.warmup, args.repeats, args.overrides)
            results.setdefault(method, {})[variant] = row
            print(f"{method:10s} {variant:9s} {row['epoch_s']:8.2f} s ({row['timed_steps']} full batches, median of "
                  f"{args.repeats}; warm-up {row['warmup_s']:.1f} s, {row['graphs_after_warmup']} graphs, "
                  f"{row['graphs_compiled_while_timed']} compiled while timed)", flush=True)
    table = render(results, variants)
    print(f"\ndevice: {device}\n\n{table}")
    name = "gpu_epoch_" + ("cuda" if cuda else "cpu")
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/gpu_epoch.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip()
    out.with_suffix(".json").write_text(json.dumps({"device": device, "note": args.note, "command": command,
                                                    "versions": versions(), "args": vars(args),
                                                    "results": results}, indent=1))
    out.with_suffix(".md").write_text(
        f"# Epoch seconds, eager vs the speed switches (CIFAR-10-LT rho 100, ResNet-32, batch 128)\n\n"
        f"Device: {device}. {args.note}\nCommand: `{command}`.\n\n"
        f"Seconds for an epoch's full batches after a whole untimed epoch, the median of {args.repeats} repeats "
        f"(`graphs_compiled_while_timed` in the JSON: 0 means no compilation in the timed region).\n\n{table}\n\n"
        "Issue 15's target on an H100-class GPU: CSA <= 0.6 s per epoch and <= 1.05 x the dual branch.\n")
    return results


if __name__ == "__main__":
    main()
