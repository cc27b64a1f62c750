"""Softmax cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LOSSES, Loss


@LOSSES.register("ce")
class CrossEntropy(Loss):
    """-log softmax(z)_y, the plain mean over the batch (or weight-normalised under class weights)."""

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # one fused call: PyTorch's weighted mean is the same weight-normalised mean as Loss.forward
        return F.cross_entropy(logits, targets, weight=self.class_weights)
