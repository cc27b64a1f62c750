"""PNG figures (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def accuracy_vs_gamma(curves: dict[str, dict], gammas: list[float], path: Path, title: str) -> Path:
    """curves: label -> {"mean": [...], "std": [...]} over gammas."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, c in curves.items():
        ax.errorbar(gammas, c["mean"], yerr=c["std"], marker="o", capsize=3, label=label)
    ax.set_xlabel(r"$\gamma$ (sampling weight $n_y^{-\gamma}$)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def embeddings(panels: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int, path: Path, title: str) -> Path:
    """panels: title -> (points N x 2, labels N); one scatter per panel, coloured by class."""
    cols = 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.5 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "viridis")
    for ax, (name, (points, labels)) in zip(axes.flat, panels.items()):
        for c in range(num_classes):
            sel = labels == c
            ax.scatter(points[sel, 0], points[sel, 1], s=2, alpha=0.5, color=cmap(c % 10 if num_classes <= 10 else c / num_classes), label=str(c))
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(markerscale=5, fontsize=7, ncol=2, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def grouped_bars(values: dict[str, dict[str, tuple[float, float]]], path: Path, title: str, ylabel: str = "test accuracy (%)") -> Path:
    """values: group (e.g. dataset) -> bar label (e.g. method) -> (mean, std)."""
    groups = list(values)
    labels = list(dict.fromkeys(k for g in groups for k in values[g]))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 3.6))
    x = np.arange(len(groups))
    for i, label in enumerate(labels):
        means = [values[g].get(label, (np.nan, 0))[0] for g in groups]
        stds = [values[g].get(label, (np.nan, 0))[1] for g in groups]
        bars = ax.bar(x + (i - (len(labels) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.set_ylim(0, 105)
    return _save(fig, path)


def image_grid(images: np.ndarray, row_labels: list[str], path: Path, title: str) -> Path:
    """images: rows x cols x C x H x W uint8 (C = 1 or 3)."""
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.85), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            img = images[r, c].transpose(1, 2, 0)
            axes[r, c].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                              vmin=0, vmax=255)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
