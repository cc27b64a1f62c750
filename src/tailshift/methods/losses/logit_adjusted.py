"""Logit-adjusted cross-entropy (Menon et al., ICLR 2021)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...validation import bounded
from .base import LOSSES, Loss


@LOSSES.register("la")
class LogitAdjusted(Loss):
    """Menon et al. 2021, Eq. 10: l(y, z) = -log [exp(z_y + tau log pi_y) / sum_j exp(z_j + tau log pi_j)],
    pi the training class prior. The model is trained on adjusted logits and predicts with plain ones."""

    @dataclass
    class Params:
        tau: float = bounded(1.0, ge=0)

    def __init__(self, class_counts, params=None, key="loss_params"):
        super().__init__(class_counts, params, key)
        self.register_buffer("adjustment", self.offsets(), persistent=False)

    def offsets(self) -> torch.Tensor:
        prior = self.class_counts / self.class_counts.sum()
        return self.params.tau * torch.log(prior.clamp_min(1e-12))

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.adjustment, targets, reduction="none")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.adjustment, targets, weight=self.class_weights)
