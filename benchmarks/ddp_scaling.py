"""Epoch time of a tiny ResNet run on 1 and 2 processes (CPU, gloo), same global batch.

ResNet-20 (CIFAR layout) with CE on a generated 3 x 32 x 32 long-tailed set (``--images``
training images, crop + flip), global batch 128, SGD. Three settings, each run for
``--epochs`` epochs with the run's own timer (``curve.json``: seconds per epoch, evaluation
excluded); the first epoch (start-up, allocator warm-up) is left out of the median:

* 1 process, 1 thread;
* 1 process, 2 threads (the same cores, used by intra-op threads);
* 2 processes (torchrun, gloo), 1 thread each: each process trains half of every batch and
  DistributedDataParallel averages the gradients during the backward pass.

A second table times the gradient synchronisation alone, in 2 spawned gloo processes of 1 thread:
ResNet-20's forward and backward on 64 images per process, the three ways interleaved step by step
(so that the machine's other load falls on all three alike): without synchronisation, under
DistributedDataParallel (the training path), and followed by one flat all-reduce of every
gradient (the hand-written averaging the engine used before DDP, kept here only for comparison).

    python benchmarks/ddp_scaling.py          # a few minutes on 2 busy cores
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from report import load_note, write_report

from tailshift.distributed import World, torchrun_command
from tailshift.models import create_model


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


def flat_all_reduce(params: list, size: int) -> None:
    """The engine's averaging before DDP: which parameters have a gradient on any rank (an all-reduce read on
    the host), then every gradient copied into one flat tensor, all-reduced, copied back."""
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = [p.grad for p, has in zip(params, present.tolist()) if has]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(size)
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(chunk.view(g.shape))


def _sync_worker(rank: int, port: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = create_model("resnet20").to(memory_format=torch.channels_last)
    params = list(model.parameters())
    ddp = World(rank, 2).data_parallel(model, find_unused_parameters=False)
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"none": [], "ddp": [], "flat": []}
    for step in range(steps + 1):  # the first step of each (allocator warm-up) is left out
        for way in times:
            model.zero_grad(set_to_none=True)
            dist.barrier()
            started = time.perf_counter()
            if way == "ddp":
                ddp(x).square().mean().backward()
            else:
                with ddp.no_sync():  # DDP's hooks stay quiet: plain forward and backward
                    ddp(x).square().mean().backward()
                if way == "flat":
                    flat_all_reduce(params, 2)
            if step:
                times[way].append(time.perf_counter() - started)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def sync_rows(steps: int, folder: Path) -> list[dict]:
    out = folder / "sync.json"
    mp.start_processes(_sync_worker, args=(free_port(), steps, str(out)), nprocs=2, start_method="spawn")
    times = json.loads(out.read_text())
    base = statistics.median(times["none"])
    names = {"none": "forward + backward, no synchronisation", "ddp": "DistributedDataParallel (the training path)",
             "flat": "forward + backward, then one flat all-reduce (before DDP)"}
    return [{"way": names[w], "median_step_ms": round(1000 * statistics.median(t), 1),
             "vs_no_sync": round(statistics.median(t) / base, 3)} for w, t in times.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sync-steps", type=int, default=20, help="timed steps of each way in the second table")
    p.add_argument("--output", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        npz = write_data(folder / "data.npz", args.images)
        rows = [run("1 process x 1 thread", config(npz, folder / "a", args.epochs, 1), 1, folder),
                run("1 process x 2 threads", config(npz, folder / "b", args.epochs, 2), 1, folder),
                run("2 processes x 1 thread", config(npz, folder / "c", args.epochs, 1), 2, folder)]
        n_train = int(np.load(npz)["y_train"].shape[0])
        sync = sync_rows(args.sync_steps, folder)
    base = rows[0]["median_epoch_s"]
    for r in rows:
        r["speed_up"] = round(base / r["median_epoch_s"], 2)
    lines = ["| Setting | Median epoch (s) | Speed-up vs 1 x 1 | Epochs (s) | Wall incl. start-up (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['median_epoch_s']} | {r['speed_up']} | {', '.join(map(str, r['epoch_seconds']))} "
              f"| {r['wall_s']} |" for r in rows]
    lines += ["", f"Gradient synchronisation alone: 2 processes x 1 thread (gloo), ResNet-20 forward + backward of 64 "
              f"images per process, median of {args.sync_steps} steps, the three ways interleaved:", "",
              "| Step | Median (ms) | vs no synchronisation |", "|---|---|---|"]
    lines += [f"| {r['way']} | {r['median_step_ms']} | {r['vs_no_sync']} |" for r in sync]
    note = (f"ResNet-20, CE, {n_train} generated 32 x 32 images, global batch 128, {args.epochs} epochs (median of "
            f"epochs 2-{args.epochs}); {load_note()}.")
    write_report(args.output, "ddp_scaling", "Data-parallel scaling on CPU", note, lines,
                 {"rows": rows, "train_images": n_train, "sync_rows": sync, "sync_steps": args.sync_steps})

if __name__ == "__main__":
    main()
