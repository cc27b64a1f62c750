"""Device-resident batches: the whole uint8 dataset lives on the device, batches are gathers.

Per-image transforms in Python worker processes are the bottleneck of every
peer codebase at these image sizes; here a batch costs one index gather and a
few tensor ops, and augmentation is index arithmetic on the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..distributed import World
from ..tensors import gather_rows
from .arrays import ArrayDataset

AUGMENTATIONS = ("none", "crop_flip")


@dataclass(frozen=True)
class RawImages:
    """A batch's images as stored (uint8, before any augmentation) and the normalisation ``x`` went
    through, for a method that draws its own views of them (BCL's contrastive views)."""

    images: torch.Tensor
    mean: torch.Tensor | None
    std: torch.Tensor | None
    memory_format: torch.memory_format

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (views of ``images / 255``) as the network sees them."""
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


@dataclass
class Batch:
    """A training batch: float images as the network sees them, labels, dataset indices."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    #: False when ``x`` is a pure function of ``index`` (no random augmentation), so
    #: per-sample results of a frozen network may be cached by index.
    augmented: bool = False
    #: the images before augmentation (images held on the device); None where a host loader augments them
    raw: RawImages | None = None
    #: views per image (test-time ensembling): ``x`` holds each image's ``views`` in a row, ``y`` one label an image
    views: int = 1


def batch_plan(length: int, steps: int, batch_size: int, world: World) -> Iterator[tuple[int, int, int, int]]:
    """(lo, hi, start, stop) of each step: the global batch is draws [lo, hi) of the epoch's
    stream, this process's rows of it are [start, stop) (all of it for one process)."""
    for step in range(steps):
        lo, hi = step * batch_size, min((step + 1) * batch_size, length)
        yield (lo, hi, *world.part(hi - lo))


def epoch_length(indices: dict[str, torch.Tensor]) -> int:
    """Draws in an epoch: the driving stream's (every other stream cycles to cover at least as many)."""
    return min(len(idx) for idx in indices.values())


def normalise(raw: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None,
              memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """uint8 -> float in [0, 1], then (x - mean) / std if given; channels-last unless told otherwise."""
    x = raw.float().div_(255.0)
    if mean is not None:
        x = (x - mean) / std
    return x.contiguous(memory_format=memory_format)


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator,
                     rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Zero-pad, random crop back to H x W and random horizontal flip, per sample, in one gather.

    images: B x C x H x W (any dtype). Offsets and flips come from ``generator``
    (on the images' device), so the result is reproducible. ``rows`` = (start, total):
    ``images`` are rows start .. start + B of a batch of ``total``; the draws are made for
    the whole batch and these rows take theirs, so any split of a batch across processes
    is augmented as the whole batch would be.
    """
    b, c, h, w = images.shape
    dev = images.device
    start, total = rows if rows is not None else (0, b)
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    off_y = torch.randint(0, 2 * padding + 1, (total,), device=dev, generator=generator)[start: start + b]
    off_x = torch.randint(0, 2 * padding + 1, (total,), device=dev, generator=generator)[start: start + b]
    flip = (torch.rand(total, device=dev, generator=generator) < 0.5)[start: start + b]
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    rows = off_y[:, None] + ys[None, :]
    cols = off_x[:, None] + torch.where(flip[:, None], (w - 1 - xs)[None, :], xs[None, :])
    # One gather over each padded plane (flat pixel index, shared by the channels): on CPU
    # it takes half the time of advanced indexing, layout conversion included.
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(b, 1, h * w)
    return padded.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)


class DeviceArrays:
    """One split held on the device as uint8; ``batch(idx)`` returns normalised floats."""

    storage = "device"
    memory_format = torch.channels_last  # of the float batches (train.channels_last=off: contiguous)

    def __init__(
        self,
        data: ArrayDataset,
        device: torch.device,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augment: str = "none",
        padding: int = 4,
    ):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; known: {', '.join(AUGMENTATIONS)}")
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).to(self.device)
        self.labels = torch.from_numpy(data.labels).to(self.device)
        self.augment = augment
        self.padding = padding
        channels = data.images.shape[1]
        self.mean = None if mean is None else torch.tensor(mean, device=self.device).view(1, channels, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=self.device).view(1, channels, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return normalise(raw, self.mean, self.std, self.memory_format)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None,
              rows: tuple[int, int] | None = None) -> Batch:
        """The batch of dataset rows ``index``; ``rows`` = (start, stop): only those rows of it
        (this process's share), augmented as they would be within the whole batch."""
        index = index.to(self.device)
        draws = None
        if rows is not None:
            draws = (rows[0], index.shape[0])
            index = index[rows[0]: rows[1]]
        stored = gather_rows(self.images, index)
        raw = random_crop_flip(stored, self.padding, generator, draws) if self.augment == "crop_flip" else stored
        return Batch(self.normalise(raw), self.labels.index_select(0, index), index, self.augment != "none",
                     RawImages(stored, self.mean, self.std, self.memory_format))

    def epoch(self, indices: dict[str, torch.Tensor], steps: int, batch_size: int, seed: int,
              world: World = World()) -> Iterator[dict[str, Batch]]:
        """Each step's batches, stream by stream (this process's rows); augmentation drawn from
        one generator seeded with ``seed``, in step and stream order."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        # one host-to-device copy per stream and epoch: a copy per step from pageable memory would block
        # the host on every step until the device caught up
        # (a copy on the CPU too, so every step's batch is a slice of this epoch's one copy)
        indices = {name: idx.to(self.device, copy=True) for name, idx in indices.items()}
        for lo, hi, start, stop in batch_plan(epoch_length(indices), steps, batch_size, world):
            rows = None if (start, stop) == (0, hi - lo) else (start, stop)
            yield {name: self.batch(idx[lo:hi], generator, rows) for name, idx in indices.items()}

    def iterate(self, batch_size: int, start: int = 0, stop: int | None = None):
        """Sequential batches of rows [start, stop) without augmentation (evaluation)."""
        stop = len(self) if stop is None else stop
        for first in range(start, stop, batch_size):
            index = torch.arange(first, min(first + batch_size, stop), device=self.device)
            yield Batch(self.normalise(self.images[index]), self.labels[index], index)
