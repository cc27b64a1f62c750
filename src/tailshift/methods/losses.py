"""Classification losses, each a small unit a method can pick by name."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import Registry

LOSSES: Registry = Registry("loss")


@LOSSES.register("ce")
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, class_counts: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


@LOSSES.register("la")
def logit_adjusted(logits: torch.Tensor, targets: torch.Tensor, class_counts: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Logit-adjusted loss (Menon et al. 2021): CE on logits + tau * log prior."""
    prior = class_counts / class_counts.sum()
    return F.cross_entropy(logits + tau * torch.log(prior.clamp_min(1e-12)), targets)
