"""Classifier heads by name: the backbone's linear head, or a cosine (normalised) one."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIERS = ("linear", "cosine")


class CosineClassifier(nn.Module):
    """z_j = <x / |x|, w_j / |w_j|>: logits are cosines in [-1, 1], no bias (the normalised
    classifier LDAM is trained with, Cao et al. 2019, Sec. 3.3). ``weight`` is C x D, as nn.Linear's.

    Class vectors start uniform in [-1, 1] and rescaled to norm 1, as the official NormedLinear
    (kaidic/LDAM-DRW models/resnet_cifar.py line 42, which renormalises its D x C weight's columns): the
    normalisation's gradient scales with 1 / |w_j|, so rows of norm ~sqrt(D / 3) (4.6 for D = 64) would
    turn |w_j|^2 (about 20) times slower than the original's at first.

    ``scale`` s multiplies the cosines: BCL's NormedLinear returns 30 cosines (FlamieZhu/Balanced-Contrastive-
    Learning@f72d070 models/resnext.py lines 14 and 18); LDAM scales in its loss and keeps s = 1 here."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 1.0):
        super().__init__()
        weight = torch.empty(num_classes, in_features).uniform_(-1, 1)
        self.weight = nn.Parameter(weight / weight.norm(dim=1, keepdim=True))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 also under autocast: losses scale cosines by up to 30 (LDAM), which would multiply
        # bf16's rounding of each cosine (about 0.004) into an error of 0.1 on every logit
        with torch.autocast(x.device.type, enabled=False):
            return self.scale * F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))


def new_classifier(backbone, num_classes: int, kind: str = "linear", in_features: int | None = None,
                   scale: float = 1.0) -> nn.Module:
    """A head of ``kind`` on ``in_features`` inputs (default: the backbone's embedding size); ``scale``: the
    cosine head's (a linear head has none)."""
    if kind not in CLASSIFIERS:
        raise ValueError(f"method.params.classifier must be one of {', '.join(CLASSIFIERS)}, got {kind!r}")
    if kind == "cosine":
        return CosineClassifier(in_features or backbone.out_dim, num_classes, scale)
    return backbone.new_head(num_classes, in_features)
