"""PNG figures (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_open  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    try:
        with atomic_open(path) as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def accuracy_vs_gamma(curves: dict[str, dict], gammas: list[float], path: Path, title: str) -> Path:
    """curves: label -> {"mean": [...], "std": [...]} over gammas (None, e.g. every run collapsed: a gap)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, c in curves.items():
        ax.errorbar(gammas, np.asarray(c["mean"], dtype=float), yerr=np.asarray(c["std"], dtype=float), marker="o",
                    capsize=3, label=label)
    ax.set_xlabel(r"$\gamma$ (sampling weight $n_y^{-\gamma}$)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def embeddings(panels: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int, path: Path, title: str,
               colour_label: str | None = None) -> Path:
    """panels: title -> (points N x 2, labels N); one scatter per panel, coloured by label. Up to 10 classes
    and no ``colour_label``: a tab10 colour per class and a legend. Otherwise a sequential scale with a colour
    bar (labelled ``colour_label``, default "class") from dark, label 0, to light, label K - 1, e.g. the
    class's rank by training count, darker = more images."""
    cols = 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.5 * rows), squeeze=False)
    sequential = colour_label is not None or num_classes > 10
    cmap = plt.get_cmap("viridis" if sequential else "tab10")
    for ax, (name, (points, labels)) in zip(axes.flat, panels.items()):
        for c in range(num_classes):
            sel = labels == c
            colour = cmap(c / max(num_classes - 1, 1) if sequential else c)
            ax.scatter(points[sel, 0], points[sel, 1], s=2, alpha=0.5, color=colour, label=str(c))
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if sequential:
        fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, max(num_classes - 1, 1)), cmap), ax=axes,
                     label=colour_label or "class")
    else:
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


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An H x W x 3 float RGB in [0, 1]: a uint8 image C x H x W (C = 1 or 3) blended with a jet
    heat-map of ``cam`` (H x W in [0, 1]) at opacity ``alpha``."""
    rgb = image.transpose(1, 2, 0).astype(np.float32) / 255.0
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    heat = plt.get_cmap("jet")(np.clip(cam, 0.0, 1.0))[..., :3]
    return (1.0 - alpha) * rgb + alpha * heat


def _show(ax, image: np.ndarray) -> None:
    """Draw one uint8 C x H x W image (grey for C = 1) without ticks."""
    img = image.transpose(1, 2, 0)
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def cam_grid(images: np.ndarray, cams: dict[str, np.ndarray], row_labels: list[str], path: Path, title: str,
             captions: dict[str, list[str]] | None = None, alpha: float = 0.5) -> Path:
    """One row per image: the image, then its CAM overlay under each model.

    images: N x C x H x W uint8; cams: column title -> N x H x W in [0, 1] (already upsampled to
    H x W); captions: column title -> N short strings under the cells (e.g. the true-class probability).
    """
    n, cols = images.shape[0], 1 + len(cams)
    fig, axes = plt.subplots(n, cols, figsize=(1.25 * cols + 1.0, 1.3 * n), squeeze=False)
    for r in range(n):
        _show(axes[r, 0], images[r])
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
        for c, (name, cam) in enumerate(cams.items(), start=1):
            ax = axes[r, c]
            ax.imshow(cam_overlay(images[r], cam[r], alpha), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if captions and name in captions:
                ax.set_xlabel(captions[name][r], fontsize=7, labelpad=2)
    for c, name in enumerate(["image", *cams]):
        axes[0, c].set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def image_rows(rows: list[tuple[str, np.ndarray]], path: Path, title: str, col_labels: list[str] | None = None,
               captions: dict[int, list[str]] | None = None) -> Path:
    """rows: (label, N x C x H x W uint8 with C = 1 or 3) per row; one image per cell.

    col_labels: titles over the first row; captions: row number -> strings under that row's cells.
    """
    n = max(images.shape[0] for _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(0.95 * n + 1.4, 1.0 * len(rows) + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            if c < images.shape[0]:
                _show(axes[r, c], images[c])
            else:
                axes[r, c].axis("off")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        for c, text in enumerate((captions or {}).get(r, [])[:n]):
            axes[r, c].set_xlabel(text, fontsize=7, labelpad=2)
    if col_labels:
        for c, label in enumerate(col_labels[:n]):
            axes[0, c].set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def confusion_plot(counts: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """A K x K confusion matrix, each row (true class) as shares of its test images."""
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1.0 + 0.45 * k))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:  # beyond that the labels and numbers no longer fit
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
        for (i, j), share in np.ndenumerate(shares):
            ax.text(j, i, f"{share:.2f}", ha="center", va="center", fontsize=6, color="white" if share > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    return _save(fig, path)
