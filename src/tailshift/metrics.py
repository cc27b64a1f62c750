"""Accuracy per class, per group (All / Many / Med / Few), and collapse detection."""
from __future__ import annotations

import numpy as np

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
