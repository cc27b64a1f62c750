"""Long-tail construction: per-class counts from a profile, then which images to keep.

Every draw comes from one ``numpy.random.RandomState`` handed in by the caller,
so the CMNIST-LT construction can continue the same stream (label noise, colours)
exactly as the authors' release does (see docs/protocol-notes.md).
"""
from __future__ import annotations

import numpy as np

from .arrays import ArrayDataset, DataError

PROFILES = ("exp", "step", "none")


def profile_counts(profile: str, num_classes: int, n_max: int, rho: float, step_fraction: float = 0.5) -> list[int]:
    """Images per class before clipping to what each class has.

    exp:  n_c = int(n_max * rho ** (-c / (C - 1)))      (Cao et al. 2019)
    step: the first ``(1 - step_fraction) * C`` classes keep n_max, the rest int(n_max / rho)
    none: n_max for every class
    """
    if rho < 1:
        raise DataError(f"imbalance ratio rho must be >= 1, got {rho}")
    if n_max < 1:
        raise DataError(f"n_max must be >= 1, got {n_max}")
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [int(n_max * rho ** (-c / (num_classes - 1))) for c in range(num_classes)]
    if profile == "step":
        if not 0 < step_fraction < 1:
            raise DataError(f"step_fraction must be in (0, 1), got {step_fraction}")
        n_head = num_classes - int(num_classes * step_fraction)
        return [int(n_max) if c < n_head else int(n_max / rho) for c in range(num_classes)]
    if profile == "none":
        return [int(n_max)] * num_classes
    raise DataError(f"unknown long-tail profile {profile!r}; known: {', '.join(PROFILES)}")


def select_longtail(labels: np.ndarray, counts: list[int], rng: np.random.RandomState) -> np.ndarray:
    """Indices to keep: per class in label order, shuffle its indices and keep the first n_c.

    Counts larger than a class are clipped to its size (MNIST digit 5 has 5421).
    The result is ordered class by class, as in the release.
    """
    # each class's indices in ascending order, as np.flatnonzero(labels == c) gives them, found
    # with one stable sort (8,142 scans of iNaturalist's 437k labels would take seconds)
    by_class = np.argsort(labels, kind="stable")
    ends = np.cumsum(np.bincount(labels, minlength=len(counts)))
    starts = ends - np.bincount(labels, minlength=len(counts))
    kept = []
    for c, n_c in enumerate(counts):
        idx = by_class[starts[c]: ends[c]].copy()
        rng.shuffle(idx)
        kept.append(idx[: min(n_c, len(idx))])
    return np.concatenate(kept).astype(np.int64)


def make_longtail(
    train: ArrayDataset,
    profile: str,
    rho: float,
    n_max: int | None,
    rng: np.random.RandomState,
    step_fraction: float = 0.5,
) -> ArrayDataset:
    """The long-tailed training set. n_max defaults to N / C (6000 for MNIST, 5000 for
    CIFAR-10), or to the largest class with profile "none" (keep the data's own imbalance)."""
    num_classes = train.num_classes
    if n_max is None:
        n_max = int(np.bincount(train.labels).max()) if profile == "none" else len(train) // num_classes
    counts = profile_counts(profile, num_classes, n_max, rho, step_fraction)
    return train.subset(select_longtail(train.labels, counts, rng))
