"""Label-distribution-aware margin loss (LDAM, Cao et al., NeurIPS 2019)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...validation import bounded
from .base import LOSSES, Loss


@LOSSES.register("ldam")
class LDAM(Loss):
    """Cao et al. 2019, Eq. 13: l(z, y) = -log [exp(s (z_y - Delta_y)) / (exp(s (z_y - Delta_y)) + sum_{j != y} exp(s z_j))],
    Delta_j = C / n_j^(1/4) with C such that the largest margin is ``max_margin``.

    Defaults are the paper's for CIFAR (max margin 0.5, scale s = 30). The logits are meant
    to be cosines: use it with a normalised classifier (``classifier: cosine``).
    """

    @dataclass
    class Params:
        max_margin: float = bounded(0.5, ge=0)
        scale: float = bounded(30.0, gt=0)

    def __init__(self, class_counts, params=None, key="loss_params"):
        super().__init__(class_counts, params, key)
        margins = 1.0 / self.class_counts.clamp_min(1.0) ** 0.25
        self.register_buffer("margins", margins * (self.params.max_margin / margins.max()), persistent=False)

    def margin_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """s (z - Delta_y e_y): the target logit lowered by its class margin, all scaled, in float32 (as
        the cosine head's logits): a reduced-precision cosine's rounding would be multiplied by s."""
        logits = logits.float()
        shift = torch.zeros_like(logits).scatter_(1, targets.view(-1, 1), self.margins[targets].view(-1, 1))
        return self.params.scale * (logits - shift)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.margin_logits(logits, targets), targets, reduction="none")
