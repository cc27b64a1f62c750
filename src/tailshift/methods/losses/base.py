"""The loss interface: a module built from the training class counts and its own params.

``forward(logits, targets)`` gives the batch loss; ``begin_epoch(epoch, epochs)`` lets a
loss change with training (DRW switches its class weights at an epoch). A loss may carry
per-class weights: the batch loss is then the weight-normalised mean
``sum_i w_{y_i} l_i / sum_i w_{y_i}`` (LDAM-DRW, Cao et al. 2019, Alg. 1). Buffers are
not persistent: they are a pure function of the class counts and the epoch, so a
checkpoint never holds them and the method's state dict does not depend on its loss.

A method (or a loss around another one) declares a loss as one field, ``loss: str = loss_field("ce")``
in a ``LossOptions`` params dataclass: that brings its ``loss_params``, checks both when the params are
built, and ``params.build_loss("loss", class_counts)`` makes the module. ``Method.begin_epoch`` passes
the epoch to every loss the method holds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from ...registry import Registry
from ...validation import RULE, OneOf, build_params, rule_of

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


def build_loss(name: str, class_counts, params: dict | None = None, key: str = "loss_params") -> Loss:
    """A registered loss by name; ``key`` names where its params were given (for error messages)."""
    return LOSSES.get(name)(class_counts, params, key)


@dataclass(frozen=True)
class LossChoice(OneOf):
    """The rule of a field declared with ``loss_field``: the name of a registered loss."""


def loss_field(default: str) -> Any:
    """A loss by name (one of LOSSES), declared in a ``LossOptions`` dataclass. The field ``X`` brings
    ``X_params`` right after it (a mapping, default empty: the YAML key and resolved value are as if
    declared by hand), checked against loss X's ``Params`` when the dataclass is built."""
    return dataclasses.field(default=default, metadata={RULE: LossChoice(LOSSES)})


class LossOptions:
    """Base of a ``Params`` dataclass that declares its losses with ``loss_field``: adds each one's
    ``_params`` field, checks them against the loss (a subclass's ``__post_init__`` calls this one's),
    and builds the loss modules."""

    #: where these params are given, for messages about a loss's params
    params_key: ClassVar[str] = "method.params"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        annotations = {}
        for name, hint in cls.__dict__.get("__annotations__", {}).items():
            annotations[name] = hint
            declared = cls.__dict__.get(name)
            if isinstance(declared, dataclasses.Field) and isinstance(declared.metadata.get(RULE), LossChoice):
                params = f"{name}_params"
                if params in cls.__dict__.get("__annotations__", {}):
                    raise TypeError(f"{cls.__qualname__}.{params} comes with loss_field {name!r}: do not declare it")
                annotations[params] = dict
                setattr(cls, params, dataclasses.field(default_factory=dict))
        cls.__annotations__ = annotations

    @classmethod
    def loss_fields(cls) -> list[str]:
        """The fields that name a loss (each with its ``_params``)."""
        return [f.name for f in dataclasses.fields(cls) if isinstance(rule_of(cls, f.name), LossChoice)]

    def __post_init__(self):
        for name in self.loss_fields():
            build_params(LOSSES.get(getattr(self, name)), getattr(self, f"{name}_params"),
                         f"{self.params_key}.{name}_params")

    def build_loss(self, name: str, class_counts, key: str | None = None) -> Loss:
        """The loss of field ``name`` with its params, for these class counts; ``key``: where these
        params were given, when not ``params_key`` (for error messages)."""
        return build_loss(getattr(self, name), class_counts, getattr(self, f"{name}_params"),
                          f"{key or self.params_key}.{name}_params")


def outermost_losses(module: nn.Module) -> Iterator[Loss]:
    """The losses among ``module``'s submodules, leaving out those inside a loss (which passes the epoch on itself)."""
    for child in module.children():
        if isinstance(child, Loss):
            yield child
        else:
            yield from outermost_losses(child)
