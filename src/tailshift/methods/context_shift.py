"""CSA's context shift shown with a trained model: one balanced batch fused with banked contexts at
fixed lambdas, as rows of uint8 images (Figures 3 and 5, and CSA's TensorBoard illustration)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.sampling import Sampler, SamplerSpec
from .base import TrainingImages

#: the fixed lambdas of Figure 5's fused rows
FIGURE3_LAMBDAS = (0.25, 0.5, 0.75, 1.0)


def to_uint8(images, mean=None, std=None) -> np.ndarray:
    """Normalised float images B x C x H x W (a tensor or an array) back to uint8 pixels.

    Undoes the pipeline's ``(x / 255 - mean) / std`` (just ``x / 255`` when ``mean`` is None).
    """
    x = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=np.float32)
    if mean is not None:
        shape = (1, -1, 1, 1)
        x = x * np.asarray(std, dtype=np.float32).reshape(shape) + np.asarray(mean, dtype=np.float32).reshape(shape)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def context_shift_rows(contexts, masks, balanced, fused: dict[float, object], mean=None, std=None,
                       mask_label: str = "background\nmask M") -> list[tuple[str, np.ndarray]]:
    """The rows of a context-shift figure, as ``plots.image_rows`` takes them.

    contexts: the bank's images (normalised floats B x C x H x W), masks: their background masks
    (B x 1 x H x W in [0, 1]), balanced: the re-sampled images, fused: lambda -> fused images.
    The context row is ``M * image`` in pixel space, so the masked-out object shows black.
    """
    context_pixels = to_uint8(contexts, mean, std)
    mask = masks.detach().float().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks, dtype=np.float32)
    mask = np.clip(mask, 0.0, 1.0)
    rows = [
        ("confident\nuniform images", context_pixels),
        (mask_label, np.rint(mask * 255).astype(np.uint8)),
        ("context\nM x image", np.rint(context_pixels * mask).astype(np.uint8)),
        ("balanced\nimages", to_uint8(balanced, mean, std)),
    ]
    rows += [(f"fused\nλ = {lam:g}", to_uint8(images, mean, std)) for lam, images in fused.items()]
    return rows


def context_shift_example(method, images: TrainingImages, n_show: int, lambdas, seed: int = 0) -> tuple[list, dict, dict]:
    """One step of a CSA ``method``'s context shift with its current model: masks of uniform batches
    from the uniform head, confident samples into a context bank (batch-sized, as in training) until
    it is full, ``n_show`` contexts drawn and fused into a class-balanced batch at each lambda.
    Returns the rows, captions by row and what was drawn; the method raises when no image is confident."""
    labels, batch = images.labels, images.batch_size
    uniform = Sampler(labels, SamplerSpec("shuffle"), seed, "figure3/uniform").epoch_indices(0)
    balanced = Sampler(labels, SamplerSpec("class_aware", per_class=images.per_class), seed,
                       "figure3/balanced").epoch_indices(0)[:batch]
    # Columns: the batch's first image of each class, by class (a class-aware batch repeats each
    # class per_class times in a row), then further images if there are fewer classes than columns.
    batch_labels = labels[balanced]
    firsts = [int(np.flatnonzero(batch_labels == c)[0]) for c in np.unique(batch_labels)]
    rest = [i for i in range(len(balanced)) if i not in set(firsts)]
    shown = balanced[(firsts + rest)[:n_show]]
    bal = images.arrays.batch(torch.from_numpy(shown))
    x_bal, y_bal = bal.x, bal.y
    uniform_batches = ((b.x, b.y) for b in (images.arrays.batch(torch.from_numpy(uniform[start:start + batch]))
                                            for start in range(0, len(uniform), batch)))
    shift = method.show_fused_batch(uniform_batches, x_bal, lambdas, torch.Generator().manual_seed(seed))
    rows = context_shift_rows(shift.contexts, shift.masks, x_bal, shift.fused, images.mean, images.std,
                              mask_label=f"background mask\nM = (1 - CAM)^{method.params.mask_power:g}")
    balanced_row = next(i for i, (label, _) in enumerate(rows) if label.startswith("balanced"))
    captions = {balanced_row: [f"class {int(c)}" for c in y_bal.cpu()]}
    info = {
        "uniform_images_scanned": shift.uniform_images_scanned,
        "bank_entries": shift.bank_entries,
        "bank_capacity": shift.bank_capacity,
        "delta": method.params.delta,
        "mask_power": method.params.mask_power,
        "lambdas": list(lambdas),
        "balanced_indices": shown.tolist(),
        "balanced_labels": y_bal.cpu().tolist(),
    }
    return rows, captions, info
