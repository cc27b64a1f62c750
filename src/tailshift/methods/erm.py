"""Single-head empirical risk minimisation with a chosen sampler and loss: CE, CB-RS, q-power
re-sampling, LA, and every loss-based method of Table 2 (Focal, CB, DRW, LDAM-DRW, Balanced Softmax)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..fingerprint import added_later
from ..validation import bounded, one_of
from .base import METHODS, STREAM_ROLES, Method, Stage, StepContext, StepOutput, StreamRequest
from .heads import CLASSIFIERS, new_classifier
from .losses import LossOptions, loss_field


class SingleHead(Method):
    """One head and one loss; subclasses say which streams feed it (``stages``).
    ``loss`` with its ``loss_params``: any registered loss; ``classifier``: linear or cosine (``classifier_scale``
    times the cosines);
    ``sigmoid_prior`` pi: the linear head's bias starts at -log((1 - pi) / pi), so every class
    starts at probability pi under a sigmoid loss (Lin et al. 2017, Sec. 4.1). Cui et al. use pi = 1 / C
    (richardaecn/class-balanced-loss src/model_base.py line 196: bias -log(C - 1)) and exempt that bias
    from weight decay, which would pull it back to 0 (src/cifar_main.py lines 349-351)."""

    @dataclass
    class Params(LossOptions):
        loss: str = loss_field("ce")
        classifier: str = one_of("linear", CLASSIFIERS)
        # the cosine classifier's s (its logits are s times the cosines; LIFT's 25: shijxcs/LIFT utils/config.py line 30)
        classifier_scale: float = added_later(bounded(1.0, gt=0, note="the cosine classifier's s"), neutral=1.0)
        sigmoid_prior: float | None = bounded(None, gt=0, lt=1)

        def __post_init__(self):
            super().__post_init__()
            if self.sigmoid_prior is not None and self.classifier != "linear":
                raise ValueError(f"method.params.sigmoid_prior needs a linear classifier, got classifier "
                                 f"{self.classifier!r}")

    default_head = "main"

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        self.loss = self.params.build_loss("loss", class_counts)
        self.head = self.new_head()
        if self.params.sigmoid_prior is not None:
            with torch.no_grad():
                self.head.bias.fill_(-math.log((1 - self.params.sigmoid_prior) / self.params.sigmoid_prior))

    def new_head(self):
        """The classifier, of the kind ``classifier`` names."""
        return new_classifier(self.backbone, self.num_classes, self.params.classifier, scale=self.params.classifier_scale)

    def trainable_parameters(self, stage: Stage) -> list:
        parameters = super().trainable_parameters(stage)
        if self.params.sigmoid_prior is None:
            return parameters
        bias = self.head.bias
        return [{"params": [p for p in parameters if p is not bias]}, {"params": [bias], "weight_decay": 0.0}]

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        batch = batches["main"]
        return StepOutput(self.loss(self.head(self.backbone(batch.x)), batch.y))

    def heads(self):
        return {"main": self.head}


@METHODS.register("erm")
class ERM(SingleHead):
    """One head trained on one stream. ``sampler``: uniform, balanced or power (with q)."""

    @dataclass
    class Params(SingleHead.Params):
        sampler: str = one_of("uniform", STREAM_ROLES)
        q: float = bounded(1.0, ge=0, le=1)  # the power stream's exponent

    def stages(self) -> list[Stage]:
        return [Stage("train", self.epochs, {"main": StreamRequest(self.params.sampler, self.params.q)})]


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


@METHODS.register("drs")
class DeferredResampling(SingleHead):
    """DRS (Cao et al. 2019, Sec. 3.3): uniform sampling until ``start_epoch``, then re-sampled batches
    (the run's class-balanced stream; Cao et al. re-sample with effective-number weights, beta = 0.9999,
    which is close to class-balanced at CIFAR sizes). Both streams are drawn every step; the epoch
    length is the uniform one (N draws), as in the paper. Default: from epoch 160 of 200."""

    @dataclass
    class Params(SingleHead.Params):
        start_epoch: int = bounded(160, ge=0)

    def stages(self) -> list[Stage]:
        return [Stage("train", self.epochs, {"main": StreamRequest("uniform"), "resampled": StreamRequest("balanced")},
                      driver="main")]

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        return super().training_step({"main": batches["resampled" if ctx.epoch >= self.params.start_epoch else "main"]}, ctx)
