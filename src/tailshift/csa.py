"""Context-Shift Augmentation (Shi et al., NeurIPS 2023) for your own training loop.

``ContextShift`` holds CSA's context bank and does its two steps, with the same functions
tailshift's ``csa`` method runs (``cam.context_masks``, ``methods.context_bank.ContextBank``,
``methods.mixing_ops``), so for the same inputs and generator it gives the same bank and the same
fused batches:

- ``update(feature_map, head, x, y)``: Grad-CAM background masks of a uniformly drawn batch
  from the model's feature map and the head that classifies it; the samples whose true-class
  probability reaches ``delta`` go into the bank (a FIFO of ``capacity`` image/mask pairs);
- ``fuse(x, generator)``: once the bank is full (``ready``), a re-sampled batch gets the
  background of as many contexts drawn from the bank, with strength lambda (Eq. 6-7); the
  labels of ``x`` are kept.

The release empties the bank at every epoch's start (``clear()``) and fuses from epoch 10
on; the balanced head then trains only on fused batches. ``state_dict()`` /
``load_state_dict()`` carry the bank through a checkpoint.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .cam import context_masks
from .methods.context_bank import ContextBank
from .methods.csa import ContextShiftAugmentation
from .methods.mixing_ops import fuse_context, sample_lambda
from .tensors import is_channels_last
from .validation import rule_of

__all__ = ["ContextShift"]

#: the CSA method's defaults (the release's), shared so the two cannot drift apart
RELEASE = ContextShiftAugmentation.Params


class ContextShift:
    """CSA's context bank, Grad-CAM context extraction and fusion, for any model and loop.

    ``capacity``: contexts the bank holds (the release: one batch). ``delta``: the true-class
    probability a uniform sample needs to give its context. ``cam``: "gradcam", or "cam" (Zhou
    et al.; needs ``classifier_weight`` in ``update``). ``mask_power``: the mask is
    (1 - cam)^power (the release squares it; the paper's text has 1). Lambda is drawn from
    ``lam_distribution`` ("uniform" on [lam_a, lam_b], or "beta" with a = lam_a, b = lam_b),
    one per batch or, with ``lam_per_sample``, one per image. ``device``: where the bank lives
    (default: that of the first batch pushed).
    """

    def __init__(self, capacity: int, *, delta: float = RELEASE.delta, cam: str = RELEASE.cam,
                 mask_power: float = RELEASE.mask_power, lam_distribution: str = RELEASE.lam_distribution,
                 lam_a: float = RELEASE.lam_a, lam_b: float = RELEASE.lam_b,
                 lam_per_sample: bool = RELEASE.lam_per_sample, device: torch.device | str | None = None):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ContextShift capacity must be an int >= 1, got {capacity!r}")
        for name, value in (("delta", delta), ("mask_power", mask_power), ("lam_a", lam_a), ("lam_b", lam_b)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"ContextShift {name} must be a finite number, got {value!r}")
        for name, value in (("delta", delta), ("cam", cam), ("mask_power", mask_power),
                            ("lam_distribution", lam_distribution)):
            complaint = rule_of(RELEASE, name).check(value, f"ContextShift {name}")
            if complaint:
                raise ValueError(complaint)
        if lam_distribution == "uniform" and not 0.0 <= lam_a <= lam_b <= 1.0:
            raise ValueError(f"ContextShift lam_a, lam_b must satisfy 0 <= lam_a <= lam_b <= 1 for a uniform lambda, "
                             f"got {lam_a}, {lam_b}")
        if lam_distribution == "beta" and not (lam_a > 0 and lam_b > 0):
            raise ValueError(f"ContextShift lam_a, lam_b must both be > 0 for a beta lambda, got {lam_a}, {lam_b}")
        self.bank = ContextBank(capacity, device)
        self.delta, self.cam, self.mask_power = delta, cam, mask_power
        self.lam_distribution, self.lam_a, self.lam_b = lam_distribution, lam_a, lam_b
        self.lam_per_sample = lam_per_sample

    @property
    def capacity(self) -> int:
        return self.bank.capacity

    @property
    def ready(self) -> bool:
        """Whether the bank is full, so ``fuse`` may draw (CSA fuses only from a full bank)."""
        return self.bank.is_full

    def __len__(self) -> int:
        """The contexts the bank holds."""
        return len(self.bank)

    def clear(self) -> None:
        """Empty the bank (the release does so at the start of every epoch)."""
        self.bank.clear()

    def update(self, feature_map: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
               head: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               classifier_weight: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Push the confident samples of a uniform batch ``x`` (B x C x H x W, labels ``y``) into the bank
        with their background masks; returns which samples were confident (a boolean (B,) tensor).

        ``feature_map``: the model's last convolutional map of ``x`` (B x C' x h x w; e.g. the training
        forward's, reused), or the function computing it from ``x``. ``head``: feature map -> logits
        (e.g. ``lambda a: fc(a.mean((2, 3)))``). The release takes the map in eval mode (batch-norm
        running statistics): call your model's ``eval()`` around ``update`` for that. ``logits``: the
        training forward's logits of ``feature_map`` (autograd recording): Grad-CAM then differentiates
        that graph, which is kept for your backward, instead of running the head again (as the CSA
        method does with the training map). No gradient reaches the model; the masks come from one
        batched Grad-CAM without hooks.
        """
        if self.cam == "cam" and classifier_weight is None:
            raise ValueError("ContextShift cam='cam' needs update(..., classifier_weight=the head's K x C' weight)")
        with torch.no_grad():
            fmap = feature_map(x) if callable(feature_map) else feature_map
            channels = x.shape[1] if is_channels_last(x) else 1
            mask, cam_logits = context_masks(fmap, head, y, x.shape[-2:], self.cam, self.mask_power,
                                             classifier_weight, logits, channels)
            if cam_logits is not None:
                logits = cam_logits
            elif logits is None:  # plain CAM never runs the head; the confidence filter needs logits
                logits = head(fmap)
        confident = logits.softmax(dim=1).gather(1, y.view(-1, 1)).squeeze(1) >= self.delta
        self.bank.push(x, mask.to(x.dtype), confident)
        return confident

    def fuse(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` (a re-sampled batch B x C x H x W) with the backgrounds of B contexts drawn from the full
        bank pasted in: lam * M * x_ctx + (1 - lam * M) * x. All randomness (the draw, then lambda)
        comes from ``generator``, so a seeded generator makes it reproducible."""
        if not self.ready:
            raise RuntimeError(f"ContextShift.fuse needs a full context bank (it holds {len(self)} of "
                               f"{self.capacity}); fuse only when ContextShift.ready")
        contexts, masks = self.bank.draw(x.shape[0], generator)
        lam = sample_lambda(x.shape[0], self.lam_distribution, self.lam_a, self.lam_b, per_sample=self.lam_per_sample,
                            generator=generator, device=x.device)
        return fuse_context(x, contexts, masks, lam)

    def state_dict(self) -> dict:
        """The bank, exactly (the settings are the constructor's)."""
        return {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state["bank"])

