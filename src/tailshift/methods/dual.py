"""The dual-branch network (CSA's base, Table 12's cost baseline): one shared backbone, a uniform
head on uniformly shuffled batches and a balanced head on re-sampled batches, losses added.

What the balanced head sees is one hook, ``balanced_input``: the plain re-sampled batch here,
the context-shifted one in CSA (``csa.py``). What more the uniform batch adds to the loss is
two others: ``uniform_views`` (further images that go through the backbone with the uniform batch)
and ``uniform_term`` (a loss of their embeddings): BCL's two strong views and its contrastive term
when configured (``contrastive.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..fingerprint import added_later
from ..data.pipeline import Batch
from ..validation import bounded, one_of
from .base import METHODS, Method, Stage, StepContext, StepOutput, StreamRequest
from .heads import CLASSIFIERS, new_classifier
from .contrastive import BalancedContrastive, contrastive_params_field
from .losses import LossOptions, loss_field
from .mixing_ops import mixup, mixup_loss

DRIVERS = ("uniform", "balanced")
BALANCED_STREAMS = ("balanced", "uniform", "power")


def bad_param(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"method.params.{name} must be {allowed}, got {value!r}")


@METHODS.register("dual")
class DualBranch(Method):
    """Per step: the uniform head's loss on the uniform batch (optionally mixup), the balanced
    head's loss on ``balanced_input`` (here the re-sampled batch itself, from the first step),
    ``uniform_weight * L_u + balanced_weight * L_b`` (+ ``uniform_term``, a further loss on the uniform
    batch). Predicts with both heads and their ensemble (mean of logits, Table 7).

    ``joint_forward``: both branches' images go through the backbone as one concatenated batch (one
    forward and one backward instead of two, the faster step on a GPU). Batch norm then normalises
    both branches with statistics of the joint batch, and its running statistics follow the joint
    batch, unlike the release, whose two forwards keep each branch's statistics its own. The
    balanced input is made before that forward, so it cannot reuse the uniform forward's feature
    map: CSA's Grad-CAM then takes its own forward, as with ``cam_mode: eval``, which (in eval mode) reads
    the running statistics before this step's batch enters them."""

    reads_feature_map = "its heads embed the branches' feature maps, which CSA's Grad-CAM shares"

    @dataclass
    class Params(LossOptions):
        driver: str = one_of("uniform", DRIVERS)  # which stream's epoch sets the steps per epoch
        # "uniform": Table 10 "w/ LA" (no re-sampling on the balanced branch); "power": q-power
        # re-sampling with ``balanced_q`` (Figure 9: the balanced branch at balance ratio gamma = 1 - q)
        balanced_stream: str = one_of("balanced", BALANCED_STREAMS)
        balanced_q: float = added_later(bounded(0.0, ge=0, le=1, note="the power stream's exponent"), neutral=0.0)
        uniform_loss: str = loss_field("ce")
        balanced_loss: str = loss_field("ce")
        uniform_weight: float = bounded(1.0, ge=0)
        balanced_weight: float = bounded(1.0, ge=0)
        mixup_alpha: float = bounded(0.0, ge=0, note="0: off")  # > 0: mixup on the uniform branch
        mixup_stop_epochs: int = bounded(3, ge=0)  # mixup off in the last epochs (release)
        # > 0: BCL's contrastive term on the uniform batch, this weight (the release's "BCL" base loss, which
        # with ``uniform_loss: la`` is BCL on the uniform branch: Table 11)
        contrastive_weight: float = bounded(0.0, ge=0, note="0: off")
        contrastive_params: dict = contrastive_params_field()
        joint_forward: bool = added_later(False, neutral=False)  # both branches in one concatenated forward (see the class docstring)
        # both heads' kind and the cosine one's s (as SingleHead's): LIFT's cosine head for lift/*_lift-csa
        classifier: str = added_later(one_of("linear", CLASSIFIERS), neutral="linear")
        classifier_scale: float = added_later(bounded(1.0, gt=0, note="the cosine classifier's s"), neutral=1.0)

    default_head = "balanced"

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        p = self.params
        self.uniform_head = new_classifier(backbone, num_classes, p.classifier, scale=p.classifier_scale)
        self.balanced_head = new_classifier(backbone, num_classes, p.classifier, scale=p.classifier_scale)
        self.uniform_loss = p.build_loss("uniform_loss", class_counts)
        self.balanced_loss = p.build_loss("balanced_loss", class_counts)
        self.contrastive = (BalancedContrastive(backbone.out_dim, p.contrastive_weight, p.contrastive_params)
                            if p.contrastive_weight > 0 else None)

    def stages(self) -> list[Stage]:
        streams = {"uniform": StreamRequest("uniform"), "balanced": StreamRequest(self.params.balanced_stream, self.params.balanced_q)}
        return [Stage("train", self.epochs, streams, driver=self.params.driver)]

    def balanced_input(self, uniform, balanced, feature_map: torch.Tensor, uniform_logits: torch.Tensor,
                       mixing: bool, ctx: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The images the balanced head trains on this step (None: no balanced loss) and extra logs.
        ``feature_map`` / ``uniform_logits``: the uniform branch's forward (on mixed images when ``mixing``),
        or None with ``joint_forward`` (asked before any forward)."""
        return balanced.x, {}

    def uniform_views(self, uniform: Batch, ctx: StepContext) -> torch.Tensor | None:
        """Further images (None: none) that go through the backbone in one batch with the uniform batch, as the
        CSA release forwards BCL's views with it (shijxcs/CSA@746dba2 CSA/train.py lines 430-437): here BCL's
        two strong views of each uniform image when ``contrastive_weight`` > 0."""
        return None if self.contrastive is None else self.contrastive.views(uniform, ctx.generator)

    def reads_stored_images(self) -> bool:
        return self.contrastive is not None

    def uniform_term(self, uniform: Batch, view_embeddings: torch.Tensor | None, ctx: StepContext
                     ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """A further loss on the uniform batch, added to the step's (None: none), and its logs, given the
        embeddings of ``uniform_views``: here BCL's contrastive term, prototypes from the uniform head, when
        ``contrastive_weight`` > 0 (the release adds it with weight 1 to the uniform head's loss, train.py
        line 445)."""
        if self.contrastive is None:
            return None, {}
        return self.contrastive.term(view_embeddings, self.uniform_head, uniform.y)

    def _feature_maps(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """The backbone's feature maps of several batches of images in one forward, split back."""
        if len(parts) == 1:
            return [self.backbone.feature_map(parts[0])]
        return list(self.backbone.feature_map(torch.cat(parts)).split([x.shape[0] for x in parts]))

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        p = self.params
        uni, bal = batches["uniform"], batches["balanced"]
        mixing = p.mixup_alpha > 0 and ctx.epoch < ctx.stage.epochs - p.mixup_stop_epochs
        if mixing:
            x_uni, y_a, y_b, lam = mixup(uni.x, uni.y, p.mixup_alpha, ctx.generator)
        else:
            x_uni = uni.x
        views = self.uniform_views(uni, ctx)
        first = [x_uni] if views is None else [x_uni, views]  # the uniform forward's images
        if p.joint_forward:
            x_bal, extra = self.balanced_input(uni, bal, None, None, mixing, ctx)
            fmaps = self._feature_maps(first if x_bal is None else [*first, x_bal])
            fmap_bal = None if x_bal is None else fmaps.pop()
        else:
            fmaps = self._feature_maps(first)
        fmap = fmaps[0]
        view_embeddings = None if views is None else self.backbone.embed(fmaps[1])
        logits_u = self.uniform_head(self.backbone.embed(fmap))
        loss_u = mixup_loss(self.uniform_loss, logits_u, y_a, y_b, lam) if mixing else self.uniform_loss(logits_u, uni.y)

        if not p.joint_forward:
            x_bal, extra = self.balanced_input(uni, bal, fmap, logits_u, mixing, ctx)
            fmap_bal = None if x_bal is None else self.backbone.feature_map(x_bal)
        if fmap_bal is not None:
            loss_b = self.balanced_loss(self.balanced_head(self.backbone.embed(fmap_bal)), bal.y)
        else:
            loss_b = loss_u.new_zeros(())
        extra = {**extra, "balanced_trained": 0.0 if fmap_bal is None else 1.0}
        loss = p.uniform_weight * loss_u + p.balanced_weight * loss_b
        term, term_logs = self.uniform_term(uni, view_embeddings, ctx)
        if term is not None:
            loss = loss + term
            extra = {**extra, **term_logs}
        return StepOutput(loss, {"loss_uniform": loss_u.detach(), "loss_balanced": loss_b.detach(), **extra})

    def untrained_heads(self, history: list[dict]) -> set[str]:
        """The balanced head (and the ensemble that averages it in) when no step gave it a loss: CSA
        before its bank ever fills with confident contexts (curves without the log: none)."""
        logged = [record["balanced_trained"] for record in history if "balanced_trained" in record]
        return {"balanced", "ensemble"} if logged and not any(logged) else set()

    def heads(self):
        return {"balanced": self.balanced_head, "uniform": self.uniform_head,
                "ensemble": lambda features: (self.balanced_head(features) + self.uniform_head(features)) / 2}
