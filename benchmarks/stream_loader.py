"""Host loader (images on the host, decoded and augmented by loader worker processes): images per
second on ImageNet-size JPEGs, and memory against dataset size.

Writes ``--images`` JPEGs of ImageNet's typical sizes (smooth synthetic scenes with noise,
about 500 x 375, quality 90) laid out as ImageNet-LT, then times the training recipe
(random-resized crop 224, flip, colour jitter 0.4) and the test recipe (resize 256, centre
crop 224) through ``HostFeed`` with 0 (in-process), 1 and 2 worker processes: images per
second over a pass of ``--batches`` batches of 64, worker start-up included.

Memory: the same number of batches drawn from a 1k-image and a 10k-image list; the 10k
list names 10k distinct paths, hard links to the 1k encoded files (same decode cost, no
10x disk), so only what the pipeline holds per image can differ. The proportional set
size (PSS: shared pages split between processes) of the training process and its workers
is sampled after every batch; the peak is reported.

    python benchmarks/stream_loader.py                     # about 2-3 minutes on 2 busy cores
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from report import load_note, write_report

from tailshift.data.lists import FileDataset
from tailshift.data.host_loader import FileImages, HostFeed

BATCH = 64


def write_jpegs(root: Path, n: int, seed: int = 0) -> list[str]:
    """n JPEGs of ImageNet-like sizes: a smooth two-colour scene, a few shapes, mild noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(400, 501)), int(rng.integers(300, 376))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx / w * rng.uniform(0.3, 1) + yy / h * rng.uniform(0.3, 1))[..., None] / 2
        img = a * (1 - t) + b * t + rng.normal(0, 12, (h, w, 3))
        for _ in range(3):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(20, 90)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        rel = f"train/n{i % 100:08d}/img_{i:06d}.JPEG"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / rel, quality=90)
        paths.append(rel)
    return paths


def linked_copies(root: Path, paths: list[str], n: int) -> list[str]:
    """n distinct paths, each a hard link to one of ``paths`` (round robin)."""
    out = []
    for i in range(n):
        rel = f"links/n{i % 1000:08d}/img_{i:06d}.JPEG"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (root / rel).exists():
            os.link(root / paths[i % len(paths)], root / rel)
        out.append(rel)
    return out


def dataset(root: Path, paths: list[str]) -> FileDataset:
    return FileDataset(str(root), np.array([p.encode() for p in paths]), np.arange(len(paths)) % 100, 100)


def pss_kib(pid: int) -> int:
    """PSS of a process and its children (loader workers), KiB."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def feed(data: FileDataset, recipe: str, workers: int) -> HostFeed:
    images = FileImages(data, recipe, 224, 256, 0.4)
    return HostFeed(images, torch.device("cpu"), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                    augmented=recipe != "none", workers=workers, prefetch=2)


def epoch_batches(loader: HostFeed, n_images: int, batches: int, seed: int):
    """``batches`` full batches of a random order of the images (cycled if there are too few)."""
    order = np.random.default_rng(seed).permutation(np.resize(np.arange(n_images), batches * BATCH))
    return loader.epoch({"main": torch.from_numpy(order)}, batches, BATCH, seed)


def throughput(data: FileDataset, recipe: str, workers: int, batches: int) -> dict:
    """Images per second over a whole pass of ``batches`` batches, worker start-up included (so
    prefetched batches cannot flatter a short pass)."""
    loader = feed(data, recipe, workers)
    started = time.perf_counter()
    if recipe == "none":
        it = loader.iterate(BATCH, 0, min(len(data), batches * BATCH))
    else:
        it = (b["main"] for b in epoch_batches(loader, len(data), batches, 1))
    seen = sum(b.x.shape[0] for b in it)
    seconds = time.perf_counter() - started
    return {"recipe": "train" if recipe != "none" else "test", "workers": workers, "images": seen,
            "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1)}


def memory(data: FileDataset, workers: int, batches: int) -> dict:
    loader = feed(data, "resized_crop", workers)
    peak, samples = 0, []
    for b in epoch_batches(loader, len(data), batches, 2):
        kib = pss_kib(os.getpid())
        samples.append(kib)
        peak = max(peak, kib)
    del b, loader
    return {"dataset_images": len(data), "workers": workers, "batches": batches, "peak_pss_mib": round(peak / 1024, 1),
            "median_pss_mib": round(statistics.median(samples) / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--memory-batches", type=int, default=10)
    p.add_argument("--output", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        paths = write_jpegs(root, args.images)
        sizes = [os.path.getsize(root / q) for q in paths]
        print(f"wrote {len(paths)} JPEGs in {time.perf_counter() - t:.0f} s, mean {np.mean(sizes) / 1024:.0f} KiB",
              file=sys.stderr)
        small = dataset(root, paths)
        rows = [throughput(small, recipe, w, args.batches) for recipe in ("resized_crop", "none") for w in (0, 1, 2)]
        large = dataset(root, linked_copies(root, paths, 10 * args.images))
        mem = [memory(d, 2, args.memory_batches) for d in (small, large)]
    lines = ["| Recipe | Workers | Images | Seconds | Images / s |", "|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['workers']} | {r['images']} | {r['seconds']} | {r['images_per_s']} |" for r in rows]
    lines += ["", "| Dataset images | Workers | Batches of 64 | Peak PSS (MiB, process + workers) | Median PSS |",
              "|---|---|---|---|---|"]
    lines += [f"| {m['dataset_images']} | {m['workers']} | {m['batches']} | {m['peak_pss_mib']} | {m['median_pss_mib']} |"
              for m in mem]
    note = (f"{load_note()}; JPEGs ~500 x 375 (mean {np.mean(sizes) / 1024:.0f} KiB), batch {BATCH}, one torch "
            "thread per process.")
    write_report(args.output, "stream_loader", "Host loader", note, lines,
                 {"throughput": rows, "memory": mem, "mean_jpeg_kib": float(np.mean(sizes) / 1024)})

if __name__ == "__main__":
    main()
