"""Accuracy per class, per group (All / Many / Med / Few), and collapse detection.

``group_accuracy`` is the public entry point for a loop of your own: All / Many / Med / Few
from predictions, labels and the training class counts, the numbers tailshift reports.
"""
from __future__ import annotations

import numpy as np

from .data.groups import class_groups

#: a run whose most-predicted class takes more than this share of the test set has collapsed
COLLAPSE_SHARE = 0.9


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    correct = np.bincount(labels, weights=(pred == labels).astype(np.float64), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    return np.divide(correct, total, out=np.full(num_classes, np.nan), where=total > 0)


def summarize(pred: np.ndarray, labels: np.ndarray, num_classes: int, groups: dict[str, np.ndarray]) -> dict:
    """All = accuracy over the test samples; a group = mean per-class accuracy of its classes.
    An empty group, or a class without test samples, is None (valid JSON, unlike NaN)."""
    per_class = per_class_accuracy(pred, labels, num_classes)
    out = {"all": float(np.mean(pred == labels) * 100)}
    for name, classes in groups.items():
        scores = per_class[classes]
        out[name] = float(np.nanmean(scores) * 100) if np.isfinite(scores).any() else None
    share = np.bincount(pred, minlength=num_classes).max() / max(len(pred), 1)
    out["max_pred_share"] = float(share)
    out["collapsed"] = bool(share > COLLAPSE_SHARE)
    out["per_class"] = [round(float(a) * 100, 3) if np.isfinite(a) else None for a in per_class]
    return out


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts K x K: row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _as_array(values) -> np.ndarray:
    """A list, an array or a tensor (on any device) as a numpy array."""
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)


def class_counts_array(class_counts) -> np.ndarray:
    """The training images per class (a list, an array or a tensor) as a 1-d float array, refusing anything else."""
    counts = _as_array(class_counts)
    numbers = np.issubdtype(counts.dtype, np.number) and counts.size > 0
    if counts.ndim != 1 or not numbers or not np.isfinite(counts).all() or counts.min() < 0:
        shown = f"shape {counts.shape}, dtype {counts.dtype}" + (f", min {counts.min()}" if numbers else "")
        raise ValueError(f"class_counts must be a non-empty 1-d sequence of finite counts >= 0 (one per class), "
                         f"got {shown}")
    return counts.astype(np.float64)


def _class_indices(values, name: str, num_classes: int) -> np.ndarray:
    array = _as_array(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or (array.size and (
            array.min() < 0 or array.max() >= num_classes)):
        raise ValueError(f"{name} must be a 1-d sequence of class indices in [0, {num_classes}) (the "
                         f"length of class_counts), got shape {array.shape}, dtype {array.dtype}")
    return array.astype(np.int64)


def group_accuracy(predictions, labels, class_counts, rule: str = "count", bounds: tuple[int, int] | None = None,
                   many_above: int = 100, few_below: int = 20) -> dict[str, float | None]:
    """All / Many / Med / Few accuracy in percent, as tailshift reports them.

    ``predictions``: predicted classes (N,), or scores / logits (N, C) whose argmax is taken;
    ``labels``: the true classes (N,); ``class_counts``: training images per class (C,).
    All is the accuracy over the N samples; a group's is the mean per-class accuracy of its
    classes that have test samples (None when there are none). Groups: ``rule="count"``
    (many: more than ``many_above`` training images, few: fewer than ``few_below``) or
    ``rule="index"`` (the release's: classes sorted by count, [0, b1) many, [b1, b2) medium,
    [b2, C) few, ``bounds`` = (b1, b2), known for 10, 100 and 1000 classes).
    """
    counts = class_counts_array(class_counts)
    num_classes = len(counts)
    predictions = _as_array(predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    pred = _class_indices(predictions, "predictions", num_classes)
    true = _class_indices(labels, "labels", num_classes)
    if len(pred) != len(true) or len(true) == 0:
        raise ValueError(f"predictions and labels must be as many and at least one, got {len(pred)} and {len(true)}")
    groups = class_groups(counts, rule, bounds, many_above, few_below)
    summary = summarize(pred, true, num_classes, groups)
    return {key: summary[key] for key in ("all", *groups)}
