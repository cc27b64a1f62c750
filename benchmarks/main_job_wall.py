"""Wall time of the README's main job: ``tailshift reproduce figure4 --datasets fashion-lt,cfashion-lt``
(CE, cRT, CB-RS and CSA on Fashion-LT and CFashion-LT) from scratch, with the machine's speed beside it.

Target (issue 15): at most 6 minutes on 2 CPU cores. CPUs sold as "2 cores" differ by 2x here, so
the record also holds two calibration figures, taken just before and just after the job: one
LeNet-2d training step (the job's unit of work: batch 128, one thread) and a 1024^3 matmul. Times
from different machines compare through them.

    python benchmarks/main_job_wall.py [--seeds 2] [--workers 2] [--name NAME]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from tailshift.cli import main as tailshift_main
from tailshift.engine import versions

from lenet_step import make_step
from report import cpu_model

RESULTS = Path(__file__).parent / "results"
TARGET_SECONDS = 360
DATASETS = "fashion-lt,cfashion-lt"


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside the block, the previous thread count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def lenet_step_ms(steps: int = 60, repeats: int = 5) -> float:
    """Median ms of one LeNet-2d CE training step on 1 x 28 x 28, batch 128, one thread, as the job runs it
    (lenet_step.py's step: the default fast path, channels-last)."""
    with one_thread():
        step, _ = make_step(in_channels=1, fast=True, batch=128, image_size=28)
        for _ in range(10):
            step()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(steps):
                step()
            times.append((time.perf_counter() - started) / steps * 1000)
        return round(statistics.median(times), 2)


def matmul_gflops(size: int = 1024, repeats: int = 10) -> float:
    """Single-thread float32 matmul throughput (best of ``repeats``)."""
    with one_thread():
        a, b = torch.rand(size, size), torch.rand(size, size)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        return round(2 * size ** 3 / best / 1e9, 1)


def calibration() -> dict:
    return {"lenet_step_ms": lenet_step_ms(), "matmul_gflops": matmul_gflops()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="2: the README's main job")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--name", help="results/<name>.json and .md (default: main_job_wall_<seeds>seeds)")
    args = parser.parse_args()
    args.name = args.name or f"main_job_wall_{args.seeds}seeds"
    before = calibration()
    with tempfile.TemporaryDirectory() as tmp:  # a fresh folder: every run trains, none is re-read
        command = ["reproduce", "figure4", "--datasets", DATASETS, "--seeds", str(args.seeds),
                   "--workers", str(args.workers), "--output", tmp]
        started = time.perf_counter()
        tailshift_main(command)
        wall = time.perf_counter() - started
        runs = json.loads((Path(tmp) / "table1.json").read_text())["runs"]
    after = calibration()
    by_method: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        by_method[run["key"].split("/")[1]].append(run["seconds"])
    record = {
        "command": "tailshift " + " ".join(command[:-2]), "workers": args.workers,
        "wall_seconds": round(wall, 1), "target_seconds": TARGET_SECONDS, "met": wall <= TARGET_SECONDS,
        "runs": len(runs), "worker_seconds": round(sum(r["seconds"] for r in runs), 1),
        "seconds_by_method": {m: {"runs": len(s), "total": round(sum(s), 1), "mean": round(sum(s) / len(s), 1)}
                              for m, s in sorted(by_method.items())},
        "calibration_before": before, "calibration_after": after,
        "cores": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "machine": platform.machine(),
        "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    table = render(record)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table + "\n")


def workers_of(r: dict):
    """The record's worker count; records written before it was stored hold it only in the command."""
    if "workers" in r:
        return r["workers"]
    words = r["command"].split()
    return words[words.index("--workers") + 1] if "--workers" in words[:-1] else "?"


def render(r: dict) -> str:
    cal = f"LeNet step {r['calibration_before']['lenet_step_ms']} / {r['calibration_after']['lenet_step_ms']} ms, " \
          f"matmul {r['calibration_before']['matmul_gflops']} / {r['calibration_after']['matmul_gflops']} GFLOP/s"
    lines = [f"`{r['command']}` on {r['cores']} cores ({r['cpu']}), {r['date']}; calibration before / after: {cal}",
             "", "| runs | workers | wall (s) | target (s) | met | worker time (s) |", "|---|---|---|---|---|---|",
             f"| {r['runs']} | {workers_of(r)} | {r['wall_seconds']:.0f} | "
             f"{r['target_seconds']} | {'yes' if r['met'] else 'NO'} | {r['worker_seconds']:.0f} |",
             "", "| method | runs | worker time (s) | mean per run (s) |", "|---|---|---|---|"]
    lines += [f"| {m} | {s['runs']} | {s['total']:.0f} | {s['mean']:.1f} |" for m, s in r["seconds_by_method"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
