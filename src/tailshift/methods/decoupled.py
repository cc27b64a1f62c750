"""Decoupled two-stage training (Kang et al., ICLR 2020): cRT, LWS and tau-normalisation on one base.

Stage 1 learns the representation and a linear head on uniformly shuffled batches
(optionally with mixup: MiSLAS, Zhong et al. 2021, the "+ mixup" rows of Table 2).
Stage 2 freezes the backbone's weights (its batch norm in eval mode, or in train mode with
``retrain_bn: train``, as Kang et al.'s code runs it) and adjusts the classifier on class-balanced
batches; a method with nothing to train there (tau-norm) has no second stage. Both
classifiers are reported: the stage-1 head under ``first_head`` and the adjusted one under
the method's ``default_head``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..fingerprint import added_later
from ..validation import bounded, one_of
from .base import METHODS, Method, Stage, StepContext, StepOutput, StreamRequest
from .losses import LossOptions, loss_field
from .mixing_ops import mixup, mixup_loss

RETRAIN_SCHEDULES = ("constant", "cosine", "cosine_epoch")  # a step schedule would use the run's milestones


class TwoStageMethod(Method):
    """The shared two-stage base. Subclasses say what stage 2 trains (``new_classifier``,
    ``start_classifier``) and how it classifies (``classify``)."""

    @dataclass
    class Params(LossOptions):
        # the release's LeNet cRT; Table 2's CIFAR configs: 10 epochs at lr 0.2
        retrain_epochs: int = bounded(4, ge=1)
        retrain_lr: float = bounded(0.1, gt=0)
        # cosine_epoch: the release's LeNet cRT (period = train.epochs)
        retrain_schedule: str = one_of("constant", RETRAIN_SCHEDULES)
        loss: str = loss_field("ce")  # both stages
        mixup_alpha: float = bounded(0.0, ge=0, note="0: off")  # > 0: stage 1 on mixup batches, lam ~ Beta(alpha, alpha)
        # the frozen backbone's batch norm in stage 2: eval (its running statistics kept) or train (each balanced
        # batch normalised with its own statistics, the running ones following them: Kang et al.'s code)
        retrain_bn: str = added_later(one_of("eval", ("eval", "train")), neutral="eval")

    # Kang et al.'s workflow: one representation, several classifiers on it (``tailshift fork``): stage 1 is the
    # same CE run under cRT, LWS and tau-norm
    fork_stage = 1
    fork_params = ("retrain_epochs", "retrain_lr", "retrain_schedule", "retrain_bn", "reinit")
    fork_family = "decoupled"
    fork_fresh_state = ("retrained.",)

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        self.loss = self.params.build_loss("loss", class_counts)
        self.head = backbone.new_head(num_classes)
        self.retrained = self.new_classifier()
        self.first_head = "mixup" if self.params.mixup_alpha > 0 else "ce"
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- what a subclass defines -------------------------------------------------------
    def new_classifier(self) -> nn.Module | None:
        """The module stage 2 trains (None: nothing to train, no second stage)."""
        raise NotImplementedError

    def start_classifier(self) -> None:
        """Set up the stage-2 module when stage 2 starts (not on resume)."""

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the adjusted classifier."""
        raise NotImplementedError

    # --- the two stages ------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        stages = [Stage("represent", self.epochs, {"main": StreamRequest("uniform")})]
        if self.retrained is not None:
            stages.append(Stage("retrain", self.params.retrain_epochs, {"main": StreamRequest("balanced")},
                                lr=self.params.retrain_lr, schedule=self.params.retrain_schedule, warmup=False,
                                retrains_classifier=True))
        return stages

    def begin_stage(self, stage: Stage, fresh: bool) -> None:
        retraining = stage.retrains_classifier
        self.backbone.requires_grad_(not retraining)
        self.head.requires_grad_(not retraining)
        if self.retrained is not None:
            self.retrained.requires_grad_(retraining)
        self._cache = None
        if retraining and fresh:
            self.start_classifier()

    @classmethod
    def fork_blocker(cls, params) -> str | None:
        if params.retrain_bn == "train":  # the frozen backbone's running statistics followed stage 2's batches
            return ("its stage 2 ran with method.params.retrain_bn=train, which moved the backbone's batch-norm "
                    "statistics")
        return None

    def trainable_parameters(self, stage: Stage):
        return list((self.retrained if stage.retrains_classifier else nn.ModuleList([self.backbone, self.head])).parameters())

    def train_mode(self, stage: Stage) -> None:
        self.train()
        if stage.retrains_classifier and self.params.retrain_bn == "eval":
            self.backbone.eval()

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        batch = batches["main"]
        if ctx.stage.retrains_classifier:
            return StepOutput(self.loss(self.classify(self._frozen_features(batch)), batch.y))
        if self.params.mixup_alpha > 0:
            x, y_a, y_b, lam = mixup(batch.x, batch.y, self.params.mixup_alpha, ctx.generator)
            return StepOutput(mixup_loss(self.loss, self.head(self.backbone(x)), y_a, y_b, lam))
        return StepOutput(self.loss(self.head(self.backbone(batch.x)), batch.y))

    @torch.no_grad()
    def _frozen_features(self, batch) -> torch.Tensor:
        """Features of the frozen backbone; cached by sample index when the batch is not randomly
        augmented and batch norm is in eval mode (a pure function of the image), which makes stage 2
        nearly free."""
        if batch.augmented or self.params.retrain_bn == "train":
            return self.backbone(batch.x)
        if self._cache is None:
            n = int(self.class_counts.sum())
            self._cache = (
                torch.zeros(n, self.backbone.out_dim, device=batch.x.device),
                torch.zeros(n, dtype=torch.bool, device=batch.x.device),
            )
        features, filled = self._cache
        missing = ~filled[batch.index]
        if missing.any():
            features[batch.index[missing]] = self.backbone(batch.x[missing])
            filled[batch.index[missing]] = True
        return features[batch.index]

    def heads(self):
        return {self.first_head: self.head, self.default_head: self.classify}


@METHODS.register("crt")
class ClassifierRetraining(TwoStageMethod):
    """cRT (Kang et al. 2020, Sec. 4): stage 2 re-trains a linear classifier
    z = W' f(x) + b' on class-balanced batches, the backbone frozen.

    It starts as a copy of the stage-1 classifier (the CSA release's choice, and MiSLAS's) unless
    ``reinit`` is true: a fresh one, as Kang et al.'s code does (the recipe kang,
    configs/_base_/recipes/kang-crt.yaml). "ce" is exactly the CE baseline with the same seed.
    """

    @dataclass
    class Params(TwoStageMethod.Params):
        reinit: bool = False

    default_head = "crt"

    def new_classifier(self) -> nn.Module:
        return self.backbone.new_head(self.num_classes)

    def start_classifier(self) -> None:
        source = self.backbone.new_head(self.num_classes).to(self.head.weight.device) if self.params.reinit else self.head
        self.retrained.load_state_dict(copy.deepcopy(source.state_dict()))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.retrained(features)


class ClassScales(nn.Module):
    """One learnable scale per class, starting at 1."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))


@METHODS.register("lws")
class LearnableWeightScaling(TwoStageMethod):
    """LWS (Kang et al. 2020, Sec. 4): z_j = f_j (w_j^T x + b_j), stage 2 learns only the per-class
    scales f (from 1) on class-balanced batches; the stage-1 weights and the backbone stay frozen."""

    default_head = "lws"

    def new_classifier(self) -> nn.Module:
        return ClassScales(self.num_classes)

    def start_classifier(self) -> None:  # a no-op in a whole run; a fork's scales arrive trained
        nn.init.ones_(self.retrained.scale)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) * self.retrained.scale


@METHODS.register("tau-norm")
class TauNormalisation(TwoStageMethod):
    """tau-normalisation (Kang et al. 2020, Sec. 4): w~_j = w_j / ||w_j||^tau, z_j = w~_j^T x, bias dropped.
    Nothing is trained after stage 1. Kang et al. pick tau on a validation set; the default is 1
    (cosine-like weights), since CIFAR-LT has no validation split here."""

    @dataclass
    class Params(TwoStageMethod.Params):
        retrain_epochs: int = bounded(0, ge=0, le=0, note="nothing is re-trained")
        tau: float = bounded(1.0, ge=0)

    default_head = "tau-norm"
    # nothing is trained after stage 1: a fork into tau-norm scores the source's stage-1 head under its tau
    fork_params = (*TwoStageMethod.fork_params, "tau")

    def new_classifier(self) -> None:
        return None

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.head.weight
        return F.linear(features, weight / weight.norm(dim=1, keepdim=True).pow(self.params.tau))
