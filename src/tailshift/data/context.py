"""Coloured context (CMNIST-LT): label noise, then a colour keyed on the (noisy) label.

Head classes take a uniformly random colour per sample, tail classes always the
colour of their own index, test samples a random colour: the colour is an
irrelevant context that the tail classes see only one way (paper Sec. 2.2.2).
The draws replay the release's numpy stream (docs/protocol-notes.md).
"""
from __future__ import annotations

import numpy as np

from .arrays import ArrayDataset, DataError

def _hex_palette(*codes: str) -> np.ndarray:
    return np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in codes], dtype=np.float64) / 255.0


#: Named 10-colour palettes, RGB in [0, 1]. "tab10" (matplotlib's default cycle) is what the
#: release's ``sns.color_palette()`` returned with no seaborn theme set: CMNIST-LT's colours.
PALETTES = {
    "tab10": _hex_palette("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
    "deep": _hex_palette("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3",  # seaborn >= 0.9 "deep"
                         "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"),
}
TAB10 = PALETTES["tab10"]


def _sequential_choice(rng: np.random.RandomState, probabilities: np.ndarray) -> np.ndarray:
    """Row i: ``rng.choice(K, p=probabilities[i])``, for all rows, with the same draws.

    numpy's legacy ``choice`` with ``p`` draws one double and searches the
    normalised CDF; drawing all doubles at once gives the identical stream, so
    this replaces a Python loop of N ``choice`` calls (a test checks equality).
    """
    cdf = probabilities.cumsum(axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random_sample(len(probabilities))
    return (cdf <= u[:, None]).sum(axis=1).astype(np.int64)


def add_label_noise(labels: np.ndarray, ratio: float, num_classes: int, rng: np.random.RandomState) -> np.ndarray:
    """Flip ``int(ratio * N)`` labels to another class, drawn proportionally to class counts.

    The shuffle that picks the noisy samples is drawn even when ratio is 0,
    as in the release, so the colour draws that follow stay aligned.
    """
    if not 0 <= ratio < 1:
        raise DataError(f"label noise ratio must be in [0, 1), got {ratio}")
    n = len(labels)
    order = np.arange(n)
    rng.shuffle(order)
    noisy = np.sort(order[: int(ratio * n)])
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    p = np.tile(counts, (len(noisy), 1))
    p[np.arange(len(noisy)), labels[noisy]] = 0.0
    noisy_labels = labels.copy()
    if len(noisy):
        noisy_labels[noisy] = _sequential_choice(rng, p)
    return noisy_labels


def colour_probabilities(labels: np.ndarray, num_colours: int, head_classes: int) -> np.ndarray:
    """Uniform over colours for head labels (< head_classes), one-hot on colour = label otherwise."""
    p = np.full((len(labels), num_colours), 1.0 / num_colours)
    tail = labels >= head_classes
    if np.any(labels[tail] >= num_colours):
        raise DataError(f"tail class {int(labels[tail].max())} has no colour; the palette has {num_colours}")
    p[tail] = 0.0
    p[np.flatnonzero(tail), labels[tail]] = 1.0
    return p


def colourize(images: np.ndarray, colours: np.ndarray, palette: np.ndarray = TAB10) -> np.ndarray:
    """Grey (N, 1, H, W) uint8 x palette[colour] per channel -> (N, 3, H, W), truncated to uint8."""
    if images.shape[1] != 1:
        raise DataError(f"coloured context needs grey images (N, 1, H, W), got {images.shape}")
    rgb = images.astype(np.float64) * palette[colours][:, :, None, None]
    return rgb.astype(np.uint8)


def make_coloured_train(
    train: ArrayDataset,
    noise: float,
    head_classes: int,
    rng: np.random.RandomState,
    palette: np.ndarray = TAB10,
) -> ArrayDataset:
    """Label noise, then colours keyed on the noisy label (the release's steps 2-4)."""
    labels = add_label_noise(train.labels, noise, train.num_classes, rng)
    colours = _sequential_choice(rng, colour_probabilities(labels, len(palette), head_classes))
    return ArrayDataset(colourize(train.images, colours, palette), labels, train.class_names)


def make_coloured_test(test: ArrayDataset, rng: np.random.RandomState, palette: np.ndarray = TAB10) -> ArrayDataset:
    """Every test sample takes a uniformly random colour."""
    p = np.full((len(test), len(palette)), 1.0 / len(palette))
    colours = _sequential_choice(rng, p)
    return ArrayDataset(colourize(test.images, colours, palette), test.labels, test.class_names)
