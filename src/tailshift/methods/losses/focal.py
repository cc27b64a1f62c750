"""Focal loss (Lin et al., ICCV 2017), softmax or sigmoid."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...validation import bounded, one_of
from .base import LOSSES, Loss

ACTIVATIONS = ("softmax", "sigmoid")


@LOSSES.register("focal")
class Focal(Loss):
    """Lin et al. 2017, Eq. 4: FL(p_t) = -(1 - p_t)^gamma log p_t.

    softmax: p_t = softmax(z)_y, one term per sample. sigmoid (Lin et al.'s own form, and
    Cui et al.'s CB-Focal): every class is a binary problem with p_t = sigmoid(z_j) for
    j = y and 1 - sigmoid(z_j) otherwise, and a sample's loss sums its C terms.
    gamma = 0 is cross-entropy (softmax) or binary cross-entropy (sigmoid).
    """

    @dataclass
    class Params:
        gamma: float = bounded(1.0, ge=0)
        activation: str = one_of("softmax", ACTIVATIONS)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        gamma = self.params.gamma
        if self.params.activation == "softmax":
            log_pt = F.log_softmax(logits, dim=1).gather(1, targets.view(-1, 1)).squeeze(1)
            return -((1 - log_pt.exp()) ** gamma) * log_pt
        onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        log_pt = -F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        return (-((1 - log_pt.exp()) ** gamma) * log_pt).sum(dim=1)
