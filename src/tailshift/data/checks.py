"""Refuse data that cannot be what it claims, in one line naming where it came from and how much is wrong.

Every reader's result passes ``check_split`` (``sources.load_dataset`` calls it), so a bad
label or an empty split stops the run before any training instead of being dropped
silently, growing the model by phantom classes, or crashing after training.
"""
from __future__ import annotations

import stat

import numpy as np

from .arrays import ArrayDataset, DataError, SplitDataset


#: labels at or beyond this are refused before anything is sized by them (a label of 2**40 would ask
#: for terabytes); the largest long-tail benchmarks have about 10,000 classes
MAX_CLASSES = 1_000_000

_SPECIAL_FILES = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def special_kind(mode: int) -> str | None:
    """What a ``stat`` mode is when it is neither a regular file nor a folder (reading one could hang)."""
    return next((name for test, name in _SPECIAL_FILES if test(mode)), None)


def check_label_bound(largest: int, where: str) -> None:
    if largest >= MAX_CLASSES:
        raise DataError(f"{where}: label {largest} is beyond the {MAX_CLASSES:,} classes tailshift takes")


def _class_list(indices: np.ndarray, names: tuple[str, ...] | None, limit: int = 5) -> str:
    shown = [f"{int(i)} ({names[int(i)]!r})" if names else str(int(i)) for i in indices[:limit]]
    return ", ".join(shown) + (", ..." if len(indices) > limit else "")


def _check_labels(split: ArrayDataset, which: str, num_classes: int, source: str, allowed: str) -> None:
    outside = split.labels >= num_classes
    if outside.any():
        bad = np.unique(split.labels[outside])
        raise DataError(f"{source}: {int(outside.sum())} {which} labels outside [0, {num_classes}) ({allowed}), "
                        f"e.g. {_class_list(bad, None)}")


def check_split(split: SplitDataset) -> None:
    """Both splits non-empty with the same image shape (image files are decoded later, to one
    crop); labels in [0, C) where C is the number of class names (or, without names, the
    training labels' range); at least two classes; every class with training images."""
    source = split.source or "the dataset"
    train, test = split.train, split.test
    for which, part in (("training", train), ("test", test)):
        if len(part) == 0:
            raise DataError(f"{source}: the {which} split is empty (0 images)")
    decoded = isinstance(train, ArrayDataset) and isinstance(test, ArrayDataset)
    if decoded and train.images.shape[1:] != test.images.shape[1:]:
        shape = lambda part: "x".join(map(str, part.images.shape[1:]))  # noqa: E731
        raise DataError(f"{source}: test images are {shape(test)} (CxHxW) but training images are {shape(train)}; "
                        f"all {len(test)} test images must match")
    for which, part in (("training", train), ("test", test)):
        check_label_bound(int(part.labels.max()), f"{source}: {which} split")
    names = train.class_names
    if names is not None:
        num_classes, allowed = len(names), f"the {len(names)} named classes"
        _check_labels(train, "training", num_classes, source, allowed)
    else:
        num_classes, allowed = int(train.labels.max()) + 1, "the classes of the training split"
    _check_labels(test, "test", num_classes, source, allowed)
    if num_classes < 2:
        raise DataError(f"{source}: {num_classes} class; a classifier needs at least two")
    counts = np.bincount(train.labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        in_test = np.intersect1d(empty, test.labels)
        also = f", {len(in_test)} of them in the test split" if len(in_test) else ""
        raise DataError(f"{source}: {len(empty)} of {num_classes} classes have no training image{also}: "
                        f"{_class_list(empty, names)}")


def check_longtail(counts: np.ndarray, longtail, class_names: tuple[str, ...] | None) -> None:
    """The long-tailed training set must keep at least one image of every class."""
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        setting = ", ".join(f"{k} {getattr(longtail, k)}" for k in ("profile", "rho", "n_max"))
        raise DataError(f"data.longtail ({setting}) leaves {len(empty)} of {len(counts)} classes without a training "
                        f"image: {_class_list(empty, class_names)}; lower data.longtail.rho or raise n_max")
