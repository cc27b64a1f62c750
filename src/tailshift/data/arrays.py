"""The one in-memory format every reader produces and every later step consumes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A data file is missing, corrupt or inconsistent."""


@dataclass(frozen=True)
class ArrayDataset:
    """uint8 images (N, C, H, W) and int64 labels (N,), with the class names if known."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DataError(
                f"labels must be (N,) with N={len(self.images)}, got shape {self.labels.shape}"
            )
        if len(self.labels) and self.labels.min() < 0:
            raise DataError(f"labels must be >= 0, found {int(self.labels.min())}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def subset(self, index: np.ndarray) -> "ArrayDataset":
        return ArrayDataset(self.images[index], self.labels[index], self.class_names)

    def with_labels(self, labels: np.ndarray) -> "ArrayDataset":
        return ArrayDataset(self.images, labels.astype(np.int64), self.class_names)


@dataclass(frozen=True)
class SplitDataset:
    """A training set and its (balanced) test set, with where they were read from.

    ``caveat`` is non-empty when the files are known to differ from the official
    dataset (e.g. a JPEG-decoded copy), so every table built on them can say so.
    """

    train: ArrayDataset
    test: ArrayDataset
    source: str = ""
    caveat: str = ""


def to_nchw(images: np.ndarray) -> np.ndarray:
    """Accept (N, H, W), (N, H, W, C) with C in {1, 3} or (N, C, H, W); return uint8 NCHW."""
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        return np.ascontiguousarray(images[:, None])
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if images.ndim == 4:
        return np.ascontiguousarray(images)
    raise DataError(f"images must have 3 or 4 dimensions, got shape {images.shape}")
