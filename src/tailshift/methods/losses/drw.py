"""Deferred re-weighting (DRW, Cao et al., NeurIPS 2019) around any other loss."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import LOSSES, Loss, build_loss, effective_number_weights


@LOSSES.register("drw")
class DeferredReweighting(Loss):
    """Cao et al. 2019, Alg. 1: the wrapped loss unweighted until ``start_epoch``, then with class
    weights w_c proportional to (1 - beta) / (1 - beta^n_c) (Cui et al.'s effective number, summing
    to C) and the batch loss sum_i w_{y_i} l_i / sum_i w_{y_i}. Defaults: the paper's CIFAR schedule
    (re-weighting from epoch 160 of 200, beta = 0.9999). ``loss``: ce (CE-DRW) or ldam (LDAM-DRW)."""

    @dataclass
    class Params:
        start_epoch: int = 160
        beta: float = 0.9999
        loss: str = "ce"
        loss_params: dict = field(default_factory=dict)

        def __post_init__(self):
            if self.start_epoch < 0:
                raise ValueError(f"loss_params.start_epoch must be >= 0, got {self.start_epoch}")
            if not 0.0 <= self.beta < 1.0:
                raise ValueError(f"loss_params.beta must be in [0, 1), got {self.beta}")
            LOSSES.get(self.loss)

    def __init__(self, class_counts, params=None, key="loss_params"):
        super().__init__(class_counts, params, key)
        self.inner = build_loss(self.params.loss, class_counts, self.params.loss_params, f"{key}.loss_params")
        self.register_buffer("drw_weights", effective_number_weights(self.class_counts, self.params.beta),
                             persistent=False)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.inner.begin_epoch(epoch, epochs)
        self.inner.set_class_weights(self.drw_weights if epoch >= self.params.start_epoch else None)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.inner.per_sample(logits, targets)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.inner(logits, targets)
