"""Mixing-based baselines of Table 2 on one head: Remix (Chou et al., ECCV 2020 workshops) and
CMO (Park et al., CVPR 2022)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import bounded
from .base import METHODS, Stage, StepContext, StepOutput, StreamRequest
from .erm import ERM, SingleHead
from .mixing_ops import cutmix_box, mixup, paste_box, sample_lambda


@METHODS.register("remix")
class Remix(ERM):
    """Remix (Chou et al. 2020, Eq. 4-6): x~ = lam x_i + (1 - lam) x_j with lam ~ Beta(alpha, alpha), and
    the label y~ = lam_y y_i + (1 - lam_y) y_j with lam_y = 0 if n_i / n_j >= kappa and lam < tau,
    lam_y = 1 if n_i / n_j <= 1 / kappa and 1 - lam < tau, else lam_y = lam: the mixed label leans
    to the minority class. Defaults: the paper's (alpha = 1, kappa = 3, tau = 0.5), uniform sampling."""

    @dataclass
    class Params(ERM.Params):
        alpha: float = bounded(1.0, gt=0)
        kappa: float = bounded(3.0, ge=1)
        tau: float = bounded(0.5, ge=0, le=1)

    def label_weights(self, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
        """lam_y per sample (Eq. 6)."""
        p = self.params
        ratio = self.class_counts[y_a] / self.class_counts[y_b]
        weights = torch.full(y_a.shape, lam, device=y_a.device)
        weights[(ratio >= p.kappa) & (lam < p.tau)] = 0.0
        weights[(ratio <= 1 / p.kappa) & (1 - lam < p.tau)] = 1.0
        return weights

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        batch = batches["main"]
        x, y_a, y_b, lam = mixup(batch.x, batch.y, self.params.alpha, ctx.generator)
        logits = self.head(self.backbone(x))
        weights = self.label_weights(y_a, y_b, lam)
        # each label's term reduced by the loss (a re-weighting loss such as DRW weights it by its label)
        loss = (self.loss.reduce(weights * self.loss.per_sample(logits, y_a), y_a)
                + self.loss.reduce((1 - weights) * self.loss.per_sample(logits, y_b), y_b))
        return StepOutput(loss)


@METHODS.register("cmo")
class ContextRichMinorityOversampling(SingleHead):
    """CMO (Park et al. 2022, Eq. 3-4): with probability ``mix_prob``, a box of a minority-oversampled
    image (class-balanced stream, the paper's 1/n weights) is pasted onto a uniformly drawn image,
    CutMix-style (lam ~ Beta(beta, beta), the box of area 1 - lam), and the loss mixes both labels by
    the areas: lam' L(z, y_b) + (1 - lam') L(z, y_f). Defaults: the paper's CIFAR settings (mix_prob 0.5,
    beta 1; as the release, no mixing in the first ``start_epoch`` + 1 epochs nor the last ``end_epochs``)."""

    @dataclass
    class Params(SingleHead.Params):
        mix_prob: float = bounded(0.5, ge=0, le=1)
        beta: float = bounded(1.0, gt=0)
        start_epoch: int = bounded(3, ge=0)
        end_epochs: int = bounded(3, ge=0)

    def stages(self) -> list[Stage]:
        return [Stage("train", self.epochs, {"main": StreamRequest("uniform"), "minority": StreamRequest("balanced")},
                      driver="main")]

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        p = self.params
        background, minority = batches["main"], batches["minority"]
        gen = ctx.generator
        window = p.start_epoch < ctx.epoch < ctx.stage.epochs - p.end_epochs
        if window and float(torch.rand((), generator=gen, device=gen.device)) < p.mix_prob:
            lam = float(sample_lambda(1, "beta", p.beta, p.beta, generator=gen))
            box = cutmix_box(background.x.shape[-2], background.x.shape[-1], lam, gen)
            x, lam = paste_box(background.x, minority.x, box)
            logits = self.head(self.backbone(x))
            return StepOutput(lam * self.loss(logits, background.y) + (1 - lam) * self.loss(logits, minority.y),
                              {"mixed": 1.0})
        return StepOutput(self.loss(self.head(self.backbone(background.x)), background.y), {"mixed": 0.0})
