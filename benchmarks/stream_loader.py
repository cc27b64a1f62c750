"""Host loader (images on the host, decoded and augmented by loader worker processes): images per
second per core on ImageNet-size JPEGs, against the plain Pillow pipeline; the packed format; memory
against dataset size.

Writes ``--images`` JPEGs of ImageNet's typical sizes (smooth synthetic scenes with noise,
about 500 x 375, quality 90) laid out as ImageNet-LT, and packs them (``tailshift pack`` at
shorter side 256).

Per core: one process decodes and augments images one by one, as a loader worker does, with
the training recipe (random-resized crop 224, flip, colour jitter 0.4) and the test recipe
(resize 256, centre crop 224). Each pipeline is timed in ``--rounds`` interleaved rounds over the
same images (median reported), so the machine's load falls on all alike:
* plain Pillow: torchvision's ImageNet recipe on PIL images (``transforms.RandomResizedCrop``:
  crop, then resize; ``RandomHorizontalFlip``; ``ColorJitter`` with ``ImageEnhance``; ``ToTensor``;
  ``Normalize``), written out here with the same calls, as every peer loader runs it;
* tailshift, CPU device: uint8 out, crop and resize in one call, a large crop decoded at a reduced
  JPEG DCT scale, the jitter applied with Pillow in the worker, normalisation on the device;
* tailshift, GPU device: the same with the jitter left to the device (``data/color.py``), whose
  cost on this CPU for a batch is reported beside (on a GPU it is a few kernels);
* packed: the same two, reading ``tailshift pack``'s memory-mapped pixels instead of JPEGs;
* ``data.decode=gpu``: the worker reads the file, parses its header and draws; decoding and every
  pixel operation happen on the GPU, which this machine does not have (not timed here).

Through ``HostFeed`` (the whole loader, batches of 64 normalised in the main process, worker
start-up included): the train and test recipes with 0 (in-process), 1 and 2 worker processes.

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

from PIL import ImageEnhance

from tailshift.data.color import color_jitter
from tailshift.data.device_decode import DeviceDecodedImages, gpu_jpeg_decoder
from tailshift.data.host_loader import FileImages, HostFeed
from tailshift.data.lists import FileDataset
from tailshift.data.pack import Pack, write_pack
from tailshift.data.transforms import jitter_draws, resized_crop_box

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


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def plain_train(path: str, rng: np.random.Generator) -> torch.Tensor:
    """torchvision's train recipe on a PIL image, call for call (ColorJitter's three enhancers in a random
    order; ToTensor; Normalize)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    left, top, w, h = resized_crop_box(img.width, img.height, rng)
    img = img.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    draws = jitter_draws(0.4, rng)
    for k in draws[3:].astype(int):
        img = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[k](img).enhance(float(draws[k]))
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def plain_test(path: str) -> torch.Tensor:
    """torchvision's test recipe on a PIL image: Resize(256), CenterCrop(224), ToTensor, Normalize."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    w, h = img.size
    img = img.resize((256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256), Image.BILINEAR)
    left, top = int(round((img.width - 224) / 2.0)), int(round((img.height - 224) / 2.0))
    x = torch.from_numpy(np.array(img.crop((left, top, left + 224, top + 224)), dtype=np.uint8))
    x = x.permute(2, 0, 1).contiguous().float().div(255)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def per_core(data: FileDataset, pack: Pack, n: int, rounds: int) -> tuple[list[dict], dict]:
    """Images per second of each pipeline in one process (median of interleaved rounds over the
    same ``n`` images), and the device jitter's cost for a batch of 64 on this CPU."""
    train_cpu = FileImages(data, "resized_crop", 224, 256, 0.4)
    train_gpu = FileImages(data, "resized_crop", 224, 256, 0.4, jitter_on_device=True)
    packed_cpu = FileImages(data, "resized_crop", 224, 256, 0.4, pack=pack)
    packed_gpu = FileImages(data, "resized_crop", 224, 256, 0.4, jitter_on_device=True, pack=pack)
    gpu_decode = DeviceDecodedImages(data, 224, 0.4, ship_jpegs=True)
    test_files, test_packed = FileImages(data, "none", 224, 256, 0.4), FileImages(data, "none", 224, 256, 0.4, pack=pack)
    rng = lambda i: np.random.default_rng([1, i])  # noqa: E731  (each image's own draws, as in the loader)
    pipelines = {
        ("train", "plain Pillow (torchvision's recipe)"): lambda i: plain_train(data.path(i), rng(i)),
        ("train", "tailshift, jitter in the worker (CPU device)"): lambda i: train_cpu.image(i, rng(i)),
        ("train", "tailshift, jitter on the device (GPU)"): lambda i: train_gpu.image(i, rng(i)),
        ("train", "packed, jitter in the worker (CPU device)"): lambda i: packed_cpu.image(i, rng(i)),
        ("train", "packed, jitter on the device (GPU)"): lambda i: packed_gpu.image(i, rng(i)),
        ("train", "data.decode=gpu: the worker's share (read, header, draws)"): lambda i: gpu_decode.image(i, rng(i)),
        ("test", "plain Pillow (torchvision's recipe)"): lambda i: plain_test(data.path(i)),
        ("test", "tailshift"): lambda i: test_files.image(i, None),
        ("test", "packed"): lambda i: test_packed.image(i, None),
    }
    seconds = {key: [] for key in pipelines}
    for _ in range(rounds):
        for key, one in pipelines.items():
            started = time.perf_counter()
            for i in range(n):
                one(i)
            seconds[key].append(time.perf_counter() - started)
    rows = []
    for (recipe, pipeline), times in seconds.items():
        plain = statistics.median(seconds[(recipe, "plain Pillow (torchvision's recipe)")])
        rows.append({"recipe": recipe, "pipeline": pipeline, "images": n, "median_seconds": round(statistics.median(times), 3),
                     "images_per_s": round(n / statistics.median(times), 1),
                     "vs_plain": round(plain / statistics.median(times), 2)})
    batch = torch.from_numpy(np.stack([train_gpu.image(i % n, rng(i))[0] for i in range(BATCH)]))
    draws = torch.from_numpy(np.stack([jitter_draws(0.4, rng(i)) for i in range(BATCH)]))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        color_jitter(batch, draws)
        times.append(time.perf_counter() - started)
    return rows, {"batch": BATCH, "median_ms": round(1000 * statistics.median(times), 1)}


def device_feed_rates(data: FileDataset, pack: Pack, device: torch.device, workers: int, batches: int,
                      batch: int = BATCH) -> list[dict]:
    """Images per second of whole training feeds on ``device`` (batches normalised there, the device
    synchronised before the clock stops), after one untimed batch: JPEG files decoded by the workers,
    the pack, and ``data.decode=gpu``; with each batch's mean pixel, to compare what they feed."""
    sources = {
        "JPEG files, workers decode": FileImages(data, "resized_crop", 224, 256, 0.4,
                                                 jitter_on_device=device.type == "cuda"),
        "packed": FileImages(data, "resized_crop", 224, 256, 0.4, jitter_on_device=device.type == "cuda", pack=pack),
        "data.decode=gpu": DeviceDecodedImages(data, 224, 0.4, ship_jpegs=gpu_jpeg_decoder(device)),
    }
    rows = []
    for name, images in sources.items():
        loader = HostFeed(images, device, MEAN, STD, augmented=True, workers=workers)
        order = np.resize(np.arange(len(data)), (batches + 1) * batch)
        stream = loader.epoch({"main": torch.from_numpy(order)}, batches + 1, batch, seed=1)
        next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started, means = time.perf_counter(), []
        for step in stream:
            means.append(float(step["main"].x.mean()))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        rows.append({"feed": name, "workers": workers, "images": batches * batch, "seconds": round(seconds, 2),
                     "images_per_s": round(batches * batch / seconds, 1),
                     "mean_normalised_pixel": round(float(np.mean(means)), 3)})
    return rows


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
    p.add_argument("--per-core-images", type=int, default=200, help="images per round of the per-core timing")
    p.add_argument("--rounds", type=int, default=5)
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
        t = time.perf_counter()
        pack_info = write_pack(root / "pack", [small], 256, workers=1)
        pack_info["seconds_one_process"] = round(time.perf_counter() - t, 1)
        core_rows, device_jitter = per_core(small, Pack(root / "pack"), min(args.per_core_images, len(paths)),
                                            args.rounds)
        rows = [throughput(small, recipe, w, args.batches) for recipe in ("resized_crop", "none") for w in (0, 1, 2)]
        large = dataset(root, linked_copies(root, paths, 10 * args.images))
        mem = [memory(d, 2, args.memory_batches) for d in (small, large)]
    lines = ["Per core (one process, image by image, as a loader worker):", "",
             "| Recipe | Pipeline | Images / s | x plain Pillow |", "|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['pipeline']} | {r['images_per_s']} | {r['vs_plain']} |" for r in core_rows]
    lines += ["", f"The device jitter of a batch of {device_jitter['batch']} takes {device_jitter['median_ms']} ms on this "
              "CPU (one thread), which is why a CPU device leaves it to the workers. The pack of "
              f"{pack_info['images']} images at shorter side 256 took {pack_info['seconds_one_process']} s on one "
              f"process ({pack_info['pixel_bytes'] / pack_info['images'] / 1024:.0f} KiB an image).", "",
              "Through HostFeed (batches of 64 normalised in the main process, worker start-up included):", "",
              "| Recipe | Workers | Images | Seconds | Images / s |", "|---|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['workers']} | {r['images']} | {r['seconds']} | {r['images_per_s']} |" for r in rows]
    lines += ["", "| Dataset images | Workers | Batches of 64 | Peak PSS (MiB, process + workers) | Median PSS |",
              "|---|---|---|---|---|"]
    lines += [f"| {m['dataset_images']} | {m['workers']} | {m['batches']} | {m['peak_pss_mib']} | {m['median_pss_mib']} |"
              for m in mem]
    note = (f"{load_note()}; JPEGs ~500 x 375 (mean {np.mean(sizes) / 1024:.0f} KiB), batch {BATCH}, one torch "
            "thread per process.")
    write_report(args.output, "stream_loader", "Host loader", note, lines,
                 {"per_core": core_rows, "device_jitter": device_jitter, "pack": pack_info, "throughput": rows,
                  "memory": mem, "mean_jpeg_kib": float(np.mean(sizes) / 1024)})

if __name__ == "__main__":
    main()
