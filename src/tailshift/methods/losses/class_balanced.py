"""Class-balanced losses with the effective number of samples (Cui et al., CVPR 2019)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...validation import bounded, one_of
from .base import LOSSES, Loss, build_loss, check_loss_params, effective_number_weights


class EffectiveNumberWeighted(Loss):
    """A loss around another one (``loss`` with its ``loss_params``) with per-class weights
    w_c proportional to (1 - beta) / (1 - beta^n_c), summing to C (Cui et al. 2019, Eq. 3-4)."""

    @dataclass
    class Params:
        beta: float = bounded(0.9999, ge=0, lt=1)
        loss: str = one_of("ce", LOSSES)
        loss_params: dict = field(default_factory=dict)

        def __post_init__(self):
            check_loss_params(self.loss, self.loss_params, "loss_params.loss_params")

    def __init__(self, class_counts, params=None, key="loss_params"):
        super().__init__(class_counts, params, key)
        self.inner = build_loss(self.params.loss, class_counts, self.params.loss_params, f"{key}.loss_params")
        self.register_buffer("effective_weights", effective_number_weights(self.class_counts, self.params.beta),
                             persistent=False)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.inner.begin_epoch(epoch, epochs)  # a wrapped DRW (or any loss that changes) keeps its schedule


@LOSSES.register("class-balanced")
class ClassBalanced(EffectiveNumberWeighted):
    """Cui et al. 2019, Eq. 5: CB(p, y) = (1 - beta) / (1 - beta^n_y) L(p, y), with the weights
    scaled to sum to C and the batch loss the plain mean of the weighted per-sample losses
    (their release). ``loss``: the wrapped L (ce: CB-CE / CB-softmax; focal: CB-Focal)."""

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.effective_weights[targets] * self.inner.per_sample(logits, targets)
