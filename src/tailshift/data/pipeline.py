"""Device-resident batches: the whole uint8 dataset lives on the device, batches are gathers.

Per-image transforms in Python worker processes are the bottleneck of every
peer codebase at these image sizes; here a batch costs one index gather and a
few tensor ops, and augmentation is index arithmetic on the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..tensors import gather_rows
from .arrays import ArrayDataset

AUGMENTATIONS = ("none", "crop_flip")


@dataclass
class Batch:
    """A training batch: float images as the network sees them, labels, dataset indices."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    #: False when ``x`` is a pure function of ``index`` (no random augmentation), so
    #: per-sample results of a frozen network may be cached by index.
    augmented: bool = False


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad, random crop back to H x W and random horizontal flip, per sample, in one gather.

    images: B x C x H x W (any dtype). Offsets and flips come from ``generator``
    (on the images' device), so the result is reproducible.
    """
    b, c, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    off_y = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    off_x = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
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
        x = raw.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        index = index.to(self.device)
        raw = gather_rows(self.images, index)
        if self.augment == "crop_flip":
            raw = random_crop_flip(raw, self.padding, generator)
        return Batch(self.normalise(raw), self.labels.index_select(0, index), index, self.augment != "none")

    def iterate(self, batch_size: int):
        """Sequential batches without augmentation (evaluation)."""
        for start in range(0, len(self), batch_size):
            index = torch.arange(start, min(start + batch_size, len(self)), device=self.device)
            yield Batch(self.normalise(self.images[index]), self.labels[index], index)
