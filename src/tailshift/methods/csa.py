"""Context-Shift Augmentation (CSA, paper Sec. 3, Algorithm 1) and its dual-branch baseline.

One shared backbone, a uniform head trained on uniformly shuffled batches and a
balanced head trained on re-sampled batches whose images get the background of
confidently classified uniform images pasted in (Eq. 6-9). Defaults follow the
release (protocol.md "CSA as released"); every point where the paper says
otherwise is a named parameter.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ..cam import CAM_METHODS, context_masks
from ..distributed import BatchShard
from ..tensors import gather_rows, is_channels_last
from ..validation import bounded, one_of
from .base import METHODS, Method, Stage, StepContext, StepOutput, StreamRequest
from .context_bank import ContextBank
from .losses import LOSSES
from .mixing import LAMBDA_DISTRIBUTIONS, fuse_context, mixup, mixup_loss, sample_lambda

CAM_MODES = ("eval", "train")
BANK_SCOPES = ("rank", "global")
DRIVERS = ("uniform", "balanced")
BALANCED_STREAMS = ("balanced", "uniform")


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"method.params.{name} must be {allowed}, got {value!r}")


@METHODS.register("csa")
class ContextShiftAugmentation(Method):
    """CSA: uniform head + context extraction, balanced head on context-shifted re-sampled batches.

    Per step: the uniform head's loss on the uniform batch; masks of that batch
    from the uniform head's (Grad-)CAM; samples with true-class probability
    >= ``delta`` go into the context bank; once the bank is full and warm-up is
    over, the balanced batch is fused with contexts drawn from the bank and the
    balanced head's loss is added. Until then the balanced head gets no loss at
    all (release, Algorithm 1 line 27).
    """

    @dataclass
    class Params:
        context_shift: bool = True  # False: the plain dual-branch network ("dual")
        driver: str = one_of("uniform", DRIVERS)  # which stream's epoch sets the steps per epoch
        # "uniform": Table 10 "w/ LA" (context shift on uniform batches)
        balanced_stream: str = one_of("balanced", BALANCED_STREAMS)
        uniform_loss: str = one_of("ce", LOSSES)
        balanced_loss: str = one_of("ce", LOSSES)
        tau: float = bounded(1.0, ge=0)  # logit-adjustment temperature of an "la" loss
        uniform_weight: float = bounded(1.0, ge=0)
        balanced_weight: float = bounded(1.0, ge=0)
        mixup_alpha: float = bounded(0.0, ge=0)  # > 0: mixup on the uniform branch
        mixup_stop_epochs: int = bounded(3, ge=0)  # mixup off in the last epochs (release)
        # "cam": Zhou et al. (Table 8), needs a pooled-linear backbone
        cam: str = one_of("gradcam", CAM_METHODS)
        # eval: BN running statistics (release); train: the training forward's map
        cam_mode: str = one_of("eval", CAM_MODES)
        delta: float = bounded(0.8, ge=0, le=1)
        mask_power: float = bounded(2.0, gt=0)  # release squares 1 - cam; the paper's Sec. 3.1 is 1.0
        use_bank: bool = True  # False: Table 4 "w/o Q"
        bank_multiple: int = bounded(1, ge=1)  # capacity in batches (Table 6)
        empty_bank_each_epoch: bool = True
        warmup_epochs: int = bounded(10, ge=0)
        # paper App. B: 3 (plain balanced batches at the end); release: 0
        stop_last_epochs: int = bounded(0, ge=0)
        lam_distribution: str = one_of("uniform", LAMBDA_DISTRIBUTIONS)
        lam_a: float = 0.0
        lam_b: float = 1.0
        lam_per_sample: bool = False  # release: one lambda per batch
        # several processes: "rank" = each process banks its own rows' contexts (the release);
        # "global" = every process's confident samples are gathered into one bank of the global
        # batch and draws are made for the whole batch (the run then equals a one-process run)
        bank_scope: str = one_of("rank", BANK_SCOPES)

        def __post_init__(self):
            if self.lam_distribution == "uniform" and not 0.0 <= self.lam_a <= self.lam_b <= 1.0:
                raise _bad("lam_a/lam_b", (self.lam_a, self.lam_b), "0 <= lam_a <= lam_b <= 1 for a uniform lambda")
            if self.lam_distribution == "beta" and not (self.lam_a > 0 and self.lam_b > 0):
                raise _bad("lam_a/lam_b", (self.lam_a, self.lam_b), "both > 0 for a beta lambda")

    default_head = "balanced"

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        p = self.params
        if p.context_shift and p.cam == "cam" and not backbone.pooled_linear:
            raise ValueError(
                f"method.params.cam=cam needs a backbone whose embed is global average pooling; "
                f"{type(backbone).__name__} is not (use cam=gradcam)"
            )
        self.uniform_head = backbone.new_head(num_classes)
        self.balanced_head = backbone.new_head(num_classes)
        self._uniform_loss = LOSSES.get(p.uniform_loss)
        self._balanced_loss = LOSSES.get(p.balanced_loss)
        # Without batch norm or dropout, eval and train mode give the same feature map,
        # so the training forward's map serves the CAM and the extra forward is saved.
        self._reuse_train_map = p.cam_mode == "train" or not backbone.mode_dependent
        # Extraction is skipped where its output can never be used: before the epoch
        # that fusion starts when the bank is emptied at that epoch's start (or there is
        # no bank), and in the final plain epochs. No random draw or state is involved,
        # so training is identical to extracting every step.
        emptied = p.empty_bank_each_epoch or not p.use_bank
        self._first_extraction_epoch = p.warmup_epochs if emptied else 0
        self.bank: ContextBank | None = None

    # --- streams and epochs --------------------------------------------------
    def stages(self) -> list[Stage]:
        streams = {"uniform": StreamRequest("uniform"), "balanced": StreamRequest(self.params.balanced_stream)}
        if self.params.driver == "balanced":
            streams = {"balanced": streams["balanced"], "uniform": streams["uniform"]}
        return [Stage("train", self.epochs, streams)]

    def begin_epoch(self, stage: Stage, epoch: int) -> None:
        if self.params.empty_bank_each_epoch and self.bank is not None:
            self.bank.clear()

    # --- context extraction --------------------------------------------------
    @contextlib.contextmanager
    def _cam_forward_mode(self):
        """Modes for the CAM passes. eval: running statistics, then every module's mode
        restored. train: batch statistics without touching the running ones."""
        if self.params.cam_mode == "eval":
            modes = [(m, m.training) for m in self.backbone.modules()]
            self.backbone.eval()
            try:
                yield
            finally:
                for m, training in modes:
                    m.training = training
        else:
            norms = [m for m in self.backbone.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
            for m in norms:
                m.track_running_stats = False
            try:
                yield
            finally:
                for m in norms:
                    m.track_running_stats = True

    def extract_contexts(
        self, x: torch.Tensor, y: torch.Tensor, train_forward: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Background masks of clean images ``x`` and which samples pass ``delta``.

        Masks are B x 1 x H x W, or B x C x H x W channels-last for a channels-last ``x``
        (the fusion then runs on matching strides, see ``upsample_cam``).

        ``train_forward``: the training forward's (feature map, uniform logits) to reuse
        (Grad-CAM then differentiates that forward's own graph, so neither the backbone
        nor the head runs again), or None for an extra forward. Nothing here reaches a
        parameter's gradient or a buffer.
        """
        p = self.params

        def head(a: torch.Tensor) -> torch.Tensor:
            return self.uniform_head(self.backbone.embed(a))

        # Reusing the training forward runs no module, so no mode needs switching.
        modes = self._cam_forward_mode() if train_forward is None else contextlib.nullcontext()
        with torch.no_grad(), modes:
            fmap, logits = train_forward if train_forward is not None else (self.backbone.feature_map(x), None)
            channels = x.shape[1] if is_channels_last(x) else 1
            mask, cam_logits = context_masks(fmap, head, y, x.shape[-2:], p.cam, p.mask_power,
                                             self.uniform_head.weight, logits, channels)
            if cam_logits is not None:
                logits = cam_logits
            elif logits is None:  # plain CAM on an extra forward: the head runs once, for delta
                logits = head(fmap)
        confident = logits.softmax(dim=1).gather(1, y.view(-1, 1)).squeeze(1) >= p.delta
        return mask, confident

    def _draw_contexts(
        self, images: torch.Tensor, masks: torch.Tensor, confident: torch.Tensor, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``n`` contexts for fusion, or None when there are not enough yet.

        With the bank: a random draw once it is full. Without (``use_bank`` False):
        this step's ``confident`` rows of ``images`` / ``masks``, drawn with replacement.
        """
        if self.params.use_bank:
            return self.bank.draw(n, generator) if self.bank.is_full else None
        if confident.shape[0] == 0:
            return None
        pick = torch.randint(confident.shape[0], (n,), generator=generator, device=generator.device)
        rows = confident.index_select(0, pick.to(confident.device))
        return gather_rows(images, rows), gather_rows(masks, rows)

    def _fuse(self, x: torch.Tensor, contexts: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator,
              shard: BatchShard | None = None) -> torch.Tensor:
        """Eq. 6-7 with lambda from the configured distribution, one per batch or per sample
        (with a gathered bank: drawn for the global batch, this process's rows kept)."""
        p = self.params
        lam = sample_lambda(
            shard.total if shard is not None else x.shape[0], p.lam_distribution, p.lam_a, p.lam_b,
            per_sample=p.lam_per_sample, generator=generator, device=x.device,
        )
        if shard is not None and p.lam_per_sample:
            lam = shard.local(lam)
        return fuse_context(x, contexts[0], contexts[1], lam)

    # --- training ------------------------------------------------------------
    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        p = self.params
        uni, bal = batches["uniform"], batches["balanced"]
        plain_phase = ctx.epoch >= ctx.stage.epochs - p.stop_last_epochs  # augmentation disabled
        mixing = p.mixup_alpha > 0 and ctx.epoch < ctx.stage.epochs - p.mixup_stop_epochs

        # Uniform branch (Eq. 4-5), optionally on mixed images.
        if mixing:
            x_mix, y_a, y_b, lam_mix = mixup(uni.x, uni.y, p.mixup_alpha, ctx.generator)
            fmap = self.backbone.feature_map(x_mix)
        else:
            fmap = self.backbone.feature_map(uni.x)
        logits_u = self.uniform_head(self.backbone.embed(fmap))
        if mixing:
            loss_u = mixup_loss(lambda z, t: self._uniform_loss(z, t, self.class_counts, p.tau), logits_u, y_a, y_b, lam_mix)
        else:
            loss_u = self._uniform_loss(logits_u, uni.y, self.class_counts, p.tau)

        # Context extraction (Sec. 3.1) and the contexts for this step's fusion. ``shard``: the
        # global batch's rows of this process when the bank spans every process.
        shard = ctx.shard if p.bank_scope == "global" and ctx.shard is not None and ctx.shard.split else None
        if p.context_shift and p.use_bank and self.bank is None:  # capacity fixed by the first batch
            rows = shard.total if shard is not None else uni.x.shape[0]
            self.bank = ContextBank(p.bank_multiple * rows, device=uni.x.device)
        pushed = 0.0
        contexts = None
        if p.context_shift and not plain_phase and ctx.epoch >= self._first_extraction_epoch:
            train_forward = (fmap, logits_u) if self._reuse_train_map and not mixing else None
            mask, confident = self.extract_contexts(uni.x, uni.y, train_forward)
            confident = confident.nonzero().squeeze(1)
            images = uni.x
            if shard is not None:  # every process's confident samples, in global batch order
                images = shard.world.gather(gather_rows(uni.x, confident))
                mask = shard.world.gather(gather_rows(mask, confident))
                confident = torch.arange(images.shape[0], device=images.device)
            pushed = float(confident.shape[0])
            if p.use_bank:
                self.bank.push(images, mask, confident)
            if ctx.epoch >= p.warmup_epochs:
                n = shard.total if shard is not None else bal.x.shape[0]
                contexts = self._draw_contexts(images, mask, confident, n, ctx.generator)
                if shard is not None and contexts is not None:
                    contexts = (shard.local(contexts[0]), shard.local(contexts[1]))

        # Balanced branch (Eq. 8-9): fused, plain (dual / final epochs) or no loss at all.
        if contexts is not None:
            x_bal = self._fuse(bal.x, contexts, ctx.generator, shard)
        elif not p.context_shift or plain_phase:
            x_bal = bal.x
        else:
            x_bal = None
        if x_bal is not None:
            loss_b = self._balanced_loss(self.balanced_head(self.backbone(x_bal)), bal.y, self.class_counts, p.tau)
        else:
            loss_b = loss_u.new_zeros(())

        loss = p.uniform_weight * loss_u + p.balanced_weight * loss_b
        logs = {
            "loss_uniform": loss_u.detach(),
            "loss_balanced": loss_b.detach(),
            "pushed": pushed,
            "fused": 1.0 if contexts is not None else 0.0,
            "bank_fill": len(self.bank) / self.bank.capacity if self.bank is not None else 0.0,
        }
        return StepOutput(loss, logs)

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        balanced, uniform = self.balanced_head(features), self.uniform_head(features)
        return {"balanced": balanced, "uniform": uniform, "ensemble": (balanced + uniform) / 2}

    # --- checkpoint ----------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"bank": None if self.bank is None else self.bank.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        bank_state = state.get("bank")
        if bank_state is None:
            self.bank = None
            return
        self.bank = ContextBank(bank_state["capacity"])
        self.bank.load_state_dict(bank_state)


@METHODS.register("dual")
class DualBranch(ContextShiftAugmentation):
    """The dual-branch network without context shift (Table 12's cost baseline): the balanced
    head is trained on plain re-sampled batches from the first step; no CAM is ever computed."""

    @dataclass
    class Params(ContextShiftAugmentation.Params):
        context_shift: bool = False
