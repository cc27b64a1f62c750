"""Balanced Softmax (Ren et al., NeurIPS 2020): not in the paper's Table 2, a standard baseline of later work."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LOSSES
from .logit_adjusted import LogitAdjusted


@LOSSES.register("balanced-softmax")
class BalancedSoftmax(LogitAdjusted):
    """Ren et al. 2020, Eq. 4: phi_y = n_y exp(z_y) / sum_j n_j exp(z_j), i.e. cross-entropy on z + log n.
    (The logit-adjusted loss at tau = 1: log n and log pi differ by a constant per sample.)"""

    @dataclass
    class Params:
        pass

    def offsets(self) -> torch.Tensor:
        return torch.log(self.class_counts.clamp_min(1.0))
