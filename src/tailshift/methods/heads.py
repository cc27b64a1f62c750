"""Classifier heads by name: the backbone's linear head, or a cosine (normalised) one."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIERS = ("linear", "cosine")


class CosineClassifier(nn.Module):
    """z_j = <x / |x|, w_j / |w_j|>: logits are cosines in [-1, 1], no bias (the normalised
    classifier LDAM is trained with, Cao et al. 2019, Sec. 3.3). ``weight`` is C x D, as nn.Linear's."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 also under autocast: losses scale cosines by up to 30 (LDAM), which would multiply
        # bf16's rounding of each cosine (about 0.004) into an error of 0.1 on every logit
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))


def new_classifier(backbone, num_classes: int, kind: str = "linear", in_features: int | None = None) -> nn.Module:
    """A head of ``kind`` on ``in_features`` inputs (default: the backbone's embedding size)."""
    if kind not in CLASSIFIERS:
        raise ValueError(f"method.params.classifier must be one of {', '.join(CLASSIFIERS)}, got {kind!r}")
    if kind == "cosine":
        return CosineClassifier(in_features or backbone.out_dim, num_classes)
    return backbone.new_head(num_classes, in_features)
