"""Packed image files (``tailshift pack``): a list dataset's images decoded once, their shorter side
resized, and stored as raw uint8 pixels in one memory-mapped file, so training reads them without
JPEG decoding (``data.pack=FOLDER``).

A pack is a folder: ``pixels.u8`` (every image's H x W x 3 bytes, one after another), ``index.npz``
(the images' paths relative to the dataset root, byte offsets, heights, widths) and ``pack.json``
(format, version, shorter side, image and byte counts). Images are resized as the test recipe
resizes them (``transforms.eval_image``: bilinear, shorter side to ``short_side``), so a pack made
at ``data.resize_size`` gives test batches equal to the files'; train crops are cut from the
resized image (small crops of large originals come out a little softer than from the file).
"""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
import os
from typing import Callable, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..io import atomic_open, atomic_write_json
from .arrays import DataError
from .lists import FileDataset
from .transforms import to_8bit

FORMAT = "tailshift-pack"
VERSION = 1
PIXELS, INDEX, MANIFEST = "pixels.u8", "index.npz", "pack.json"


def shorter_side_resized(img: Image.Image, short_side: int) -> Image.Image:
    """The image with its shorter side at ``short_side`` (as ``eval_image`` resizes; never enlarged)."""
    w, h = img.size
    if min(w, h) <= short_side:
        return img
    size = (short_side, int(short_side * h / w)) if w <= h else (int(short_side * w / h), short_side)
    return img.resize(size, Image.BILINEAR)


def _packed(job: tuple[str, int]) -> np.ndarray | str:
    """One image, decoded and resized, as H x W x 3 uint8 (a worker's job), or the error's message."""
    path, short_side = job
    try:
        with Image.open(path) as img:
            return np.asarray(shorter_side_resized(to_8bit(img, "RGB"), short_side), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"cannot decode image {path}: {e}"


def write_pack(folder: str | Path, datasets: Iterable[FileDataset], short_side: int, workers: int = 1,
               progress=lambda done, total: None) -> dict:
    """Pack every distinct image of ``datasets`` (their roots may differ; paths are keyed as given,
    relative to the root) into ``folder``; returns the manifest. Files are written atomically, the
    manifest last, so a pack interrupted part way is refused rather than half read."""
    if short_side < 1:
        raise DataError(f"--short-side must be a positive number of pixels, got {short_side}")
    seen: dict[bytes, str] = {}
    for data in datasets:
        for rel in data.paths:
            seen.setdefault(bytes(rel), os.path.join(data.root, rel.decode()))
    keys = list(seen)
    folder = Path(folder)
    offsets, heights, widths = (np.zeros(len(keys), np.int64) for _ in range(3))
    offset = 0
    with atomic_open(folder / PIXELS) as out, multiprocessing.get_context("fork").Pool(max(1, workers)) as pool:
        for i, pixels in enumerate(pool.imap(_packed, ((seen[k], short_side) for k in keys), chunksize=8)):
            if isinstance(pixels, str):
                raise DataError(pixels)
            out.write(pixels.tobytes())
            offsets[i], (heights[i], widths[i]) = offset, pixels.shape[:2]
            offset += pixels.nbytes
            progress(i + 1, len(keys))
    with atomic_open(folder / INDEX) as f:
        np.savez(f, paths=np.array(keys), offsets=offsets, heights=heights, widths=widths)
    manifest = {"format": FORMAT, "version": VERSION, "short_side": short_side, "images": len(keys),
                "pixel_bytes": offset}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


class Pack:
    """A pack opened for reading; its pixel file is memory-mapped on first use in each process (a
    forked loader worker maps it itself rather than inheriting a copy)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        where = f"data.pack={folder}"
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise DataError(f"{where} is not a tailshift pack (no {MANIFEST}); make one with `tailshift pack`") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{where}: cannot read {MANIFEST} ({e}); re-make the pack with `tailshift pack`") from None
        if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
            raise DataError(f"{where}: {MANIFEST} is not a {FORMAT} version {VERSION} manifest")
        self.short_side = int(manifest["short_side"])
        try:
            with np.load(self.folder / INDEX) as index:
                paths, self.offsets = index["paths"], index["offsets"]
                self.heights, self.widths = index["heights"], index["widths"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{where}: cannot read {INDEX} ({e}); re-make the pack with `tailshift pack`") from None
        size = (self.folder / PIXELS).stat().st_size if (self.folder / PIXELS).is_file() else -1
        ends = self.offsets + self.heights * self.widths * 3
        if len(paths) != manifest["images"] or size != manifest["pixel_bytes"] or (len(ends) and ends.max() > size):
            raise DataError(f"{where} is damaged or truncated: {PIXELS} has {size} bytes and {len(paths)} images "
                            f"indexed, its manifest says {manifest['pixel_bytes']} bytes and {manifest['images']} "
                            "images; re-make it with `tailshift pack`")
        self.row_of = {bytes(p): i for i, p in enumerate(paths)}
        self._pixels: np.memmap | None = None

    def rows(self, data: FileDataset, resize_size: int) -> np.ndarray:
        """The pack's row of each image of ``data``; refuses a pack that lacks one, or is too small for
        the test recipe's resize (it would enlarge the packed image)."""
        if self.short_side < resize_size:
            raise DataError(f"data.pack={self.folder} was packed at shorter side {self.short_side} < "
                            f"data.resize_size={resize_size}; pack again with --short-side {resize_size} or more")
        rows = np.empty(len(data), np.int64)
        for i, rel in enumerate(data.paths):
            row = self.row_of.get(bytes(rel))
            if row is None:
                raise DataError(f"data.pack={self.folder} holds no image {rel.decode()!r}: it was packed from "
                                "another dataset or list; pack this config's data with `tailshift pack`")
            rows[i] = row
        return rows

    def image(self, row: int) -> Image.Image:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / PIXELS, dtype=np.uint8, mode="r")
        h, w, start = int(self.heights[row]), int(self.widths[row]), int(self.offsets[row])
        return Image.fromarray(np.asarray(self._pixels[start: start + h * w * 3]).reshape(h, w, 3))

    def __getstate__(self):  # workers map the file themselves
        return {**self.__dict__, "_pixels": None}


def pack_progress(total_every: int = 1000) -> Callable[[int, int], None]:
    """A progress callback for the CLI: a line every ``total_every`` images and at the end."""
    def report(done: int, total: int) -> None:
        if done % total_every == 0 or done == total:
            print(f"packed {done} / {total} images", flush=True)
    return report
