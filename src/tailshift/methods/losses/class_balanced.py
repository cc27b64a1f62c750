"""Class-balanced losses with the effective number of samples (Cui et al., CVPR 2019)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...validation import bounded
from .base import LOSSES, Loss, LossOptions, effective_number_weights, loss_field


class EffectiveNumberWeighted(Loss):
    """A loss around another one (``loss`` with its ``loss_params``) with per-class weights
    w_c proportional to (1 - beta) / (1 - beta^n_c), summing to C (Cui et al. 2019, Eq. 3-4)."""

    @dataclass
    class Params(LossOptions):
        params_key = "loss_params"  # these params are a loss's own (for messages)
        beta: float = bounded(0.9999, ge=0, lt=1)
        loss: str = loss_field("ce")

    def __init__(self, class_counts, params=None, key="loss_params"):
        super().__init__(class_counts, params, key)
        self.inner = self.params.build_loss("loss", class_counts, key)
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
