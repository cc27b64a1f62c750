"""Deferred re-weighting (DRW, Cao et al., NeurIPS 2019) around any other loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...validation import bounded
from .base import LOSSES
from .class_balanced import EffectiveNumberWeighted


@LOSSES.register("drw")
class DeferredReweighting(EffectiveNumberWeighted):
    """Cao et al. 2019, Alg. 1: the wrapped loss unweighted until ``start_epoch``, then with class
    weights w_c proportional to (1 - beta) / (1 - beta^n_c) (Cui et al.'s effective number, summing
    to C) and the batch loss sum_i w_{y_i} l_i / sum_i w_{y_i}. Defaults: the paper's CIFAR schedule
    (re-weighting from epoch 160 of 200, beta = 0.9999). ``loss``: ce (CE-DRW) or ldam (LDAM-DRW)."""

    @dataclass
    class Params(EffectiveNumberWeighted.Params):
        start_epoch: int = bounded(160, ge=0)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        super().begin_epoch(epoch, epochs)
        # the weights go to the wrapped loss, whose own (fused) forward applies them
        self.inner.set_class_weights(self.effective_weights if epoch >= self.params.start_epoch else None)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.inner.per_sample(logits, targets)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.inner(logits, targets)

    def reduce(self, losses: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.inner.reduce(losses, targets)
