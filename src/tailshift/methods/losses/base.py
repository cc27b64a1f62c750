"""The loss interface: a module built from the training class counts and its own params.

``forward(logits, targets)`` gives the batch loss; ``begin_epoch(epoch, epochs)`` lets a
loss change with training (DRW switches its class weights at an epoch). A loss may carry
per-class weights: the batch loss is then the weight-normalised mean
``sum_i w_{y_i} l_i / sum_i w_{y_i}`` (LDAM-DRW, Cao et al. 2019, Alg. 1). Buffers are
not persistent: they are a pure function of the class counts and the epoch, so a
checkpoint never holds them and the method's state dict does not depend on its loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...registry import Registry
from ...validation import build_params

LOSSES: Registry = Registry("loss")


class Loss(nn.Module):
    """Base class: subclasses set ``Params`` and implement ``per_sample``."""

    @dataclass
    class Params:
        pass

    def __init__(self, class_counts, params: dict | None = None, key: str = "loss_params"):
        super().__init__()
        self.params = build_params(type(self), params or {}, key)
        self.register_buffer("class_counts", torch.as_tensor(np.asarray(class_counts), dtype=torch.float32),
                             persistent=False)
        self.register_buffer("class_weights", None, persistent=False)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The unweighted loss of each sample (B,)."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.per_sample(logits, targets), targets)

    def reduce(self, losses: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch loss of per-sample ``losses`` (B,) of ``targets``: the plain mean, or the
        class-weight-normalised one; for methods that weight samples themselves (Remix)."""
        if self.class_weights is None:
            return losses.mean()
        weights = self.class_weights[targets]
        return (weights * losses).sum() / weights.sum()

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Per-class weights (C,) for the weight-normalised mean, or None for the plain mean."""
        self.class_weights = None if weights is None else weights.to(self.class_counts.device)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called before every epoch (0-based ``epoch`` of ``epochs``); stateless losses ignore it."""


def effective_number_weights(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. 2019, Eq. 3-4: w_c proportional to (1 - beta) / (1 - beta^n_c), scaled so sum_c w_c = C."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"effective-number beta must be in [0, 1), got {beta}")
    counts = class_counts.double()
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, counts))
    return (weights / weights.sum() * len(counts)).float()


def check_loss_params(name: str, params: dict, key: str) -> None:
    """Validate a loss's params where they are given (at config build, before any data is read)."""
    build_params(LOSSES.get(name), params, key)


def build_loss(name: str, class_counts, params: dict | None = None, key: str = "loss_params") -> Loss:
    """A registered loss by name; ``key`` names where its params were given (for error messages)."""
    return LOSSES.get(name)(class_counts, params, key)
