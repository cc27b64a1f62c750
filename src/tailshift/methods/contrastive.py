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

from ..data.strong_augment import StrongViewRecipe, strong_views
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
    """BCL's contrastive branch: two strong views of each image of a batch, drawn from the image as stored
    (``Batch.raw``, before the batch's own crop and flip) by ``data.strong_augment``, whose embeddings (the
    method's backbone forward) go through a projection MLP; the class prototypes are the classifier's weights
    through a second MLP (both L2-normalised); ``balanced_contrastive_loss`` of the two. ``hidden_dim`` None:
    the MLPs' hidden width is their input width, as BCL's code builds them (FlamieZhu/Balanced-Contrastive-
    Learning@f72d070 models/resnext.py lines 291 and 301); the CSA release's BCLHead takes 512
    (shijxcs/CSA@746dba2 CSA/models/head.py line 19, built with its defaults at CSA/train.py line 139).
    ``term``: the loss times ``weight``, as a method adds it (its ``contrastive_weight``; its
    ``contrastive_params`` are these Params)."""

    @dataclass
    class Params:
        temperature: float = bounded(0.1, gt=0)
        feat_dim: int = bounded(128, ge=1)
        hidden_dim: int | None = bounded(None, ge=1, note="None: the input width")
        # the views (data/strong_augment.py): RandomResizedCrop scale (crop_scale, 1), ColorJitter(jitter x 3,
        # hue) with p jitter_p, RandomGrayscale p grayscale_p, GaussianBlur p blur_p
        crop_scale: float = bounded(0.2, gt=0, le=1)
        jitter: float = bounded(0.4, ge=0, le=1)
        hue: float = bounded(0.1, ge=0, le=0.5)
        jitter_p: float = bounded(0.8, ge=0, le=1)
        grayscale_p: float = bounded(0.2, ge=0, le=1)
        blur_p: float = bounded(0.5, ge=0, le=1)

    def __init__(self, in_dim: int, weight: float, params: dict | None = None,
                 key: str = "method.params.contrastive_params"):
        super().__init__()
        self.weight = weight
        self.params = build_params(type(self), params or {}, key)
        p = self.params
        hidden = p.hidden_dim or in_dim
        self.projection = mlp(in_dim, hidden, p.feat_dim)
        self.prototype_head = mlp(in_dim, hidden, p.feat_dim)
        self.recipe = StrongViewRecipe((p.crop_scale, 1.0), p.jitter, p.hue, p.jitter_p, p.grayscale_p, p.blur_p)

    def views(self, batch, generator: torch.Generator) -> torch.Tensor:
        """Two strong views of each of ``batch``'s stored images, stacked (2B x C x H x W), normalised as
        ``batch.x``; first views first."""
        if batch.raw is None:
            raise ValueError("BCL's contrastive views are drawn from the stored images, which data.storage=host "
                             "does not keep with a batch: use data.storage=device")
        images = batch.raw.images.float().div_(255.0)
        both = torch.cat([strong_views(images, self.recipe, generator) for _ in range(2)])
        return batch.raw.normalise(both)

    def forward(self, view_embeddings: torch.Tensor, classifier_weight: torch.Tensor, targets: torch.Tensor
                ) -> torch.Tensor:
        """The loss of the views' backbone embeddings (2B x D, as ``views`` stacks them)."""
        views = F.normalize(self.projection(view_embeddings), dim=1)
        prototypes = F.normalize(self.prototype_head(classifier_weight), dim=1)
        return balanced_contrastive_loss(views, prototypes, targets, self.params.temperature)

    def term(self, view_embeddings: torch.Tensor, classifier: nn.Module, targets: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``weight`` times the loss (prototypes from ``classifier.weight``), and the loss itself to log."""
        loss = self(view_embeddings, classifier.weight, targets)
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
