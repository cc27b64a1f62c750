"""The balanced supervised contrastive loss of BCL (Zhu et al., CVPR 2022) and the branch that feeds it:
BCL's contrastive term, which the BCL method adds to its supervised loss and the dual branch (Table 11's
CSA on BCL) to its uniform branch's when ``contrastive_weight`` > 0."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.pipeline import random_crop_flip
from ..tensors import is_channels_last
from ..validation import RULE, bounded, build_params


def balanced_contrastive_loss(views: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """Zhu et al. 2022, Eq. 6-7: for every anchor view v_i (two views per sample, rows [0, B) and [B, 2B)
    of ``views``, unit-norm), with the C class prototypes appended to the candidates (class-complement)
    and each class's candidates averaged in the denominator (class-averaging):

        L_i = -1/|P_i| sum_{p in P_i} log [ exp(v_i.v_p / T) / sum_k 1/|A_k| sum_{j in A_k} exp(v_i.v_j / T) ]

    P_i: the other views and the prototype of class y_i; A_k: the candidates of class k, i excluded.
    Returns the mean over the 2B anchors.
    """
    n, classes = views.shape[0], prototypes.shape[0]
    labels = torch.cat([targets, targets, torch.arange(classes, device=targets.device)])
    candidates = torch.cat([views, prototypes])
    logits = views @ candidates.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # for stability; cancels in the ratio
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[torch.arange(n), torch.arange(n)] = False
    positive = (labels[:n, None] == labels[None, :]) & not_self
    class_size = torch.bincount(labels, minlength=classes).to(logits.dtype)[labels]  # |class of j| among candidates
    per_class = class_size[None, :] - positive.to(logits.dtype)  # the anchor's own class counts without it
    denominator = (logits.exp() * not_self / per_class).sum(dim=1, keepdim=True)
    log_prob = logits - denominator.log()
    return (-(log_prob * positive).sum(dim=1) / positive.sum(dim=1)).mean()


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class BalancedContrastive(nn.Module):
    """BCL's contrastive branch: two more views of a batch (random crop with ``padding`` and flip of
    the batch as given), the backbone's embeddings of them through a projection MLP, the class
    prototypes from the classifier's weights through a second MLP (both L2-normalised), and
    ``balanced_contrastive_loss``. The views are re-crops of the engine's (augmented) batch:
    BCL's SimAugment colour jitter and greyscale are not applied. ``term``: the loss times ``weight``,
    as a method adds it (the method's ``contrastive_weight``; its ``contrastive_params`` are these Params)."""

    @dataclass
    class Params:
        temperature: float = bounded(0.1, gt=0)
        feat_dim: int = bounded(128, ge=1)
        hidden_dim: int = bounded(512, ge=1)
        padding: int = bounded(4, ge=0)

    def __init__(self, in_dim: int, weight: float, params: dict | None = None,
                 key: str = "method.params.contrastive_params"):
        super().__init__()
        self.weight = weight
        self.params = build_params(type(self), params or {}, key)
        p = self.params
        self.projection = mlp(in_dim, p.hidden_dim, p.feat_dim)
        self.prototype_head = mlp(in_dim, p.hidden_dim, p.feat_dim)

    def views(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Two independently re-cropped and flipped copies of ``x``, stacked (2B x C x H x W)."""
        both = torch.cat([random_crop_flip(x, self.params.padding, generator) for _ in range(2)])
        return both.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else both

    def forward(self, backbone: nn.Module, x: torch.Tensor, classifier_weight: torch.Tensor, targets: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        views = F.normalize(self.projection(backbone(self.views(x, generator))), dim=1)
        prototypes = F.normalize(self.prototype_head(classifier_weight), dim=1)
        return balanced_contrastive_loss(views, prototypes, targets, self.params.temperature)

    def term(self, backbone: nn.Module, batch, classifier: nn.Linear, generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``weight`` times the loss of ``batch`` (prototypes from ``classifier``), and the loss itself to log."""
        loss = self(backbone, batch.x, classifier.weight, batch.y, generator)
        return self.weight * loss, {"loss_contrastive": loss.detach()}


@dataclass(frozen=True)
class ContrastiveParamsRule:
    """The rule of ``contrastive_params``: ``BalancedContrastive``'s params, checked where they are given."""

    def check(self, value: dict, key: str) -> str | None:
        try:
            build_params(BalancedContrastive, value, key)
        except ValueError as err:  # the one-line ConfigError naming the bad value
            return str(err)
        return None


def contrastive_params_field() -> Any:
    """A method's ``contrastive_params`` field (a mapping, default empty), checked when the params are built."""
    return dataclasses.field(default_factory=dict, metadata={RULE: ContrastiveParamsRule()})
