"""Epoch time of a tiny ResNet run on 1 and 2 processes (CPU, gloo), same global batch.

ResNet-20 (CIFAR layout) with CE on a generated 3 x 32 x 32 long-tailed set (``--images``
training images, crop + flip), global batch 128, SGD. Three settings, each run for
``--epochs`` epochs with the run's own timer (``curve.json``: seconds per epoch, evaluation
excluded); the first epoch (start-up, allocator warm-up) is left out of the median:

* 1 process, 1 thread;
* 1 process, 2 threads (the same cores, used by intra-op threads);
* 2 processes (torchrun, gloo), 1 thread each: each process trains half of every batch and
  the gradients are all-reduced every step.

    python benchmarks/ddp_scaling.py          # about 2 minutes on 2 busy cores
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import load_note, write_report

from tailshift.distributed import torchrun_command


def write_data(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    counts = np.maximum((n * 0.3 * 0.7 ** np.arange(10)).astype(int), 5)
    labels = np.repeat(np.arange(10), counts)
    x = rng.integers(0, 255, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=labels, x_test=x[:500], y_test=labels[:500])
    return path


def config(npz: Path, out: Path, epochs: int, threads: int) -> dict:
    return {"data": {"dataset": "npz", "root": str(npz), "longtail": {"profile": "none"}, "augment": "crop_flip",
                     "groups": "count", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "model": {"name": "resnet20"}, "method": {"name": "ce"},
            "train": {"epochs": epochs, "batch_size": 128, "test_batch_size": 500, "eval_every": 0,
                      "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "schedule": "cosine"}},
            "output": str(out), "progress": False, "device": "cpu", "threads": threads}


def run(name: str, cfg: dict, nproc: int, folder: Path) -> dict:
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"])}
    started = time.perf_counter()
    subprocess.run(torchrun_command(nproc, ["train", str(path)]) if nproc > 1 else
                   [sys.executable, "-m", "tailshift", "train", str(path)], env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    curve = json.loads((Path(cfg["output"]) / "curve.json").read_text())
    seconds = [e["seconds"] for e in curve]
    return {"setting": name, "processes": nproc, "threads_per_process": cfg["threads"],
            "epoch_seconds": seconds, "median_epoch_s": round(statistics.median(seconds[1:]), 3),
            "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--output", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        npz = write_data(folder / "data.npz", args.images)
        rows = [run("1 process x 1 thread", config(npz, folder / "a", args.epochs, 1), 1, folder),
                run("1 process x 2 threads", config(npz, folder / "b", args.epochs, 2), 1, folder),
                run("2 processes x 1 thread", config(npz, folder / "c", args.epochs, 1), 2, folder)]
        n_train = int(np.load(npz)["y_train"].shape[0])
    base = rows[0]["median_epoch_s"]
    for r in rows:
        r["speed_up"] = round(base / r["median_epoch_s"], 2)
    lines = ["| Setting | Median epoch (s) | Speed-up vs 1 x 1 | Epochs (s) | Wall incl. start-up (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['median_epoch_s']} | {r['speed_up']} | {', '.join(map(str, r['epoch_seconds']))} "
              f"| {r['wall_s']} |" for r in rows]
    note = (f"ResNet-20, CE, {n_train} generated 32 x 32 images, global batch 128, {args.epochs} epochs (median of "
            f"epochs 2-{args.epochs}); {load_note()}.")
    write_report(args.output, "ddp_scaling", "Data-parallel scaling on CPU", note, lines,
                 {"rows": rows, "train_images": n_train})

if __name__ == "__main__":
    main()
