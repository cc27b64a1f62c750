"""Decoupled classifier re-training (cRT, Kang et al. 2020) as a two-stage method."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..validation import bounded, one_of
from .base import METHODS, Method, Stage, StepContext, StepOutput, StreamRequest
from .losses import LOSSES

RETRAIN_SCHEDULES = ("constant", "cosine", "cosine_epoch")  # a step schedule would use the run's milestones


@METHODS.register("crt")
class ClassifierRetraining(Method):
    """Stage 1: CE with uniform sampling. Stage 2: freeze the backbone (eval mode)
    and re-train a classifier on class-balanced batches.

    The stage-2 classifier starts as a copy of the stage-1 classifier (the
    release's choice) unless ``reinit`` is true. Both heads are reported: "ce"
    is exactly the CE baseline with the same seed, "crt" the re-trained one.
    """

    @dataclass
    class Params:
        retrain_epochs: int = bounded(4, ge=1)
        retrain_lr: float = bounded(0.1, gt=0)
        reinit: bool = False
        # cosine_epoch: the release's LeNet cRT (period = train.epochs)
        retrain_schedule: str = one_of("constant", RETRAIN_SCHEDULES)
        loss: str = one_of("ce", LOSSES)

    default_head = "crt"

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        self.loss_fn = LOSSES.get(self.params.loss)
        self.head = backbone.new_head(num_classes)
        self.retrained = backbone.new_head(num_classes)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def stages(self) -> list[Stage]:
        return [
            Stage("represent", self.epochs, {"main": StreamRequest("uniform")}),
            Stage(
                "retrain",
                self.params.retrain_epochs,
                {"main": StreamRequest("balanced")},
                lr=self.params.retrain_lr,
                schedule=self.params.retrain_schedule,
            ),
        ]

    def begin_stage(self, stage: Stage, fresh: bool) -> None:
        frozen = stage.name == "retrain"
        self.backbone.requires_grad_(not frozen)
        self.head.requires_grad_(not frozen)
        self.retrained.requires_grad_(frozen)
        self._cache = None
        if frozen and fresh:
            if self.params.reinit:
                self.retrained.load_state_dict(self.backbone.new_head(self.num_classes).to(self.head.weight.device).state_dict())
            else:
                self.retrained.load_state_dict(copy.deepcopy(self.head.state_dict()))

    def trainable_parameters(self, stage: Stage):
        return list((self.retrained if stage.name == "retrain" else nn.ModuleList([self.backbone, self.head])).parameters())

    def train_mode(self, stage: Stage) -> None:
        self.train()
        if stage.name == "retrain":
            self.backbone.eval()

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        batch = batches["main"]
        if ctx.stage.name == "retrain":
            logits = self.retrained(self._frozen_features(batch))
        else:
            logits = self.head(self.backbone(batch.x))
        return StepOutput(self.loss_fn(logits, batch.y, self.class_counts, 1.0))

    @torch.no_grad()
    def _frozen_features(self, batch) -> torch.Tensor:
        """Features of the frozen, eval-mode backbone; cached by sample index when the
        batch is not randomly augmented, which makes stage 2 nearly free."""
        if batch.augmented:
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

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"ce": self.head(features), "crt": self.retrained(features)}
