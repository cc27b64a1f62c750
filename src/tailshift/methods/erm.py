"""Single-head empirical risk minimisation with a chosen sampler: CE, CB-RS, q-power re-sampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import bounded, one_of
from .base import METHODS, STREAM_ROLES, Method, Stage, StepContext, StepOutput, StreamRequest
from .losses import LOSSES


@METHODS.register("erm")
class ERM(Method):
    """One linear head trained on one stream. ``sampler``: uniform, balanced or power (with q)."""

    @dataclass
    class Params:
        sampler: str = one_of("uniform", STREAM_ROLES)
        q: float = bounded(1.0, ge=0, le=1)  # the power stream's exponent
        loss: str = one_of("ce", LOSSES)
        tau: float = bounded(1.0, ge=0)  # logit-adjustment temperature of the "la" loss

    default_head = "main"

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        self.loss_fn = LOSSES.get(self.params.loss)
        self.head = backbone.new_head(num_classes)
        self.stream = StreamRequest(self.params.sampler, self.params.q)

    def stages(self) -> list[Stage]:
        return [Stage("train", self.epochs, {"main": self.stream})]

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        batch = batches["main"]
        logits = self.head(self.backbone(batch.x))
        return StepOutput(self.loss_fn(logits, batch.y, self.class_counts, self.params.tau))

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"main": self.head(self.backbone(x))}


@METHODS.register("ce")
class CrossEntropy(ERM):
    """CE with uniform shuffling (the paper's baseline)."""


@METHODS.register("cbrs")
class ClassBalancedResampling(ERM):
    """CB-RS: the whole training on class-balanced batches (q = 0)."""

    @dataclass
    class Params(ERM.Params):
        sampler: str = "balanced"
        q: float = 0.0


@METHODS.register("resample")
class PowerResampling(ERM):
    """q-power re-sampling, Eq. (2): per-sample weight n_y^(q-1); gamma = 1 - q in Figure 1."""

    @dataclass
    class Params(ERM.Params):
        sampler: str = "power"
        q: float = 0.5


@METHODS.register("la")
class LogitAdjustment(ERM):
    """Logit-adjusted loss with uniform sampling (Menon et al. 2021)."""

    @dataclass
    class Params(ERM.Params):
        loss: str = "la"
