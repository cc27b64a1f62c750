"""Context-Shift Augmentation (CSA, paper Sec. 3, Algorithm 1): the dual-branch network whose
balanced batches get the background of confidently classified uniform images pasted in.

One shared backbone, a uniform head trained on uniformly shuffled batches and a
balanced head trained on re-sampled batches whose images get the background of
confidently classified uniform images pasted in (Eq. 6-9). Defaults follow the
release (docs/protocol-notes.md, "CSA as released"); every point where the paper says
otherwise is a named parameter.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ..cam import CAM_METHODS, context_masks
from ..distributed import BatchShard, synchronises_batchnorm
from ..tensors import gather_rows, is_channels_last
from ..validation import bounded, one_of
from .base import METHODS, Stage, StepContext, TrainingImages
from .context_bank import ContextBank
from .context_shift import FIGURE3_LAMBDAS, context_shift_example
from .dual import DualBranch, bad_param
from .mixing_ops import LAMBDA_DISTRIBUTIONS, fuse_context, sample_lambda

CAM_MODES = ("eval", "train")
BANK_SCOPES = ("rank", "global")
ILLUSTRATION_SHOWN = 8  # balanced images in the TensorBoard illustration


class NoConfidentImage(RuntimeError):
    """No training image reaches the uniform head's confidence ``delta``: there is no context to show."""


@dataclass
class FusedBatch:
    """One balanced batch under context shift, for showing (Figure 5): the drawn contexts and their
    masks, the fused batch at each lambda, and how the bank was filled."""

    contexts: torch.Tensor
    masks: torch.Tensor
    fused: dict[float, torch.Tensor]
    uniform_images_scanned: int
    bank_entries: int
    bank_capacity: int


@METHODS.register("csa")
class ContextShiftAugmentation(DualBranch):
    """CSA: the dual branch plus context extraction; the balanced head trains on context-shifted batches.

    Per step: the uniform head's loss on the uniform batch; masks of that batch
    from the uniform head's (Grad-)CAM; samples with true-class probability
    >= ``delta`` go into the context bank; once the bank is full and warm-up is
    over, the balanced batch is fused with contexts drawn from the bank and the
    balanced head's loss is added. Until then the balanced head gets no loss at
    all (release, Algorithm 1 line 27).
    """

    may_skip_parameters = True  # the balanced head, on steps without contexts
    reads_feature_map = "Grad-CAM"

    @dataclass
    class Params(DualBranch.Params):
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
            super().__post_init__()
            if self.lam_distribution == "uniform" and not 0.0 <= self.lam_a <= self.lam_b <= 1.0:
                raise bad_param("lam_a/lam_b", (self.lam_a, self.lam_b), "0 <= lam_a <= lam_b <= 1 for a uniform lambda")
            if self.lam_distribution == "beta" and not (self.lam_a > 0 and self.lam_b > 0):
                raise bad_param("lam_a/lam_b", (self.lam_a, self.lam_b), "both > 0 for a beta lambda")

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        p = self.params
        if p.cam == "cam" and not backbone.pooled_linear:
            raise ValueError(
                f"method.params.cam=cam needs a backbone whose embed is global average pooling; "
                f"{type(backbone).__name__} is not (use cam=gradcam)"
            )
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

    def begin_epoch(self, stage: Stage, epoch: int) -> None:
        super().begin_epoch(stage, epoch)
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
        return mask.to(x.dtype), confident  # under autocast the CAM is bf16 / fp16: masks stay in the images' dtype

    def _draw_contexts(
        self, images: torch.Tensor, masks: torch.Tensor, confident: torch.Tensor, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``n`` contexts for fusion, or None when there are not enough yet.

        With the bank: a random draw once it is full. Without (``use_bank`` False):
        this step's ``confident`` rows (a boolean mask) of ``images`` / ``masks``, drawn with replacement.
        """
        if self.params.use_bank:
            return self.bank.draw(n, generator) if self.bank.is_full else None
        rows = confident.nonzero().squeeze(1)
        if rows.shape[0] == 0:
            return None
        pick = torch.randint(rows.shape[0], (n,), generator=generator, device=generator.device)
        rows = rows.index_select(0, pick.to(rows.device))
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

    # --- the balanced branch's input ------------------------------------------
    def balanced_input(self, uniform, balanced, feature_map, uniform_logits, mixing: bool, ctx: StepContext):
        """Context extraction (Sec. 3.1) from the uniform batch, then the balanced batch fused
        (Eq. 6-9) once contexts are available, plain in the final ``stop_last_epochs``, else None."""
        p = self.params
        plain_phase = ctx.epoch >= ctx.stage.epochs - p.stop_last_epochs  # augmentation disabled
        # ``shard``: the global batch's rows of this process when the bank spans every process
        shard = ctx.shard if p.bank_scope == "global" and ctx.shard is not None and ctx.shard.split else None
        if p.use_bank and self.bank is None:  # capacity fixed by the first batch
            rows = shard.total if shard is not None else uniform.x.shape[0]
            self.bank = ContextBank(p.bank_multiple * rows, device=uniform.x.device)
        pushed = 0.0
        contexts = None
        if not plain_phase and ctx.epoch >= self._first_extraction_epoch:
            reuse = self._reuse_train_map and not mixing and feature_map is not None  # None: joint_forward
            train_forward = (feature_map, uniform_logits) if reuse else None
            mask, confident = self.extract_contexts(uniform.x, uniform.y, train_forward)
            images = uniform.x
            if shard is not None:  # every process's confident samples, in global batch order
                rows = confident.nonzero().squeeze(1)
                images = shard.world.gather(gather_rows(uniform.x, rows))
                mask = shard.world.gather(gather_rows(mask, rows))
                confident = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
            pushed = confident.sum(dtype=torch.float32)  # a device scalar: logging it waits for nothing
            if p.use_bank:
                self.bank.push(images, mask, confident)
            if ctx.epoch >= p.warmup_epochs:
                n = shard.total if shard is not None else balanced.x.shape[0]
                contexts = self._draw_contexts(images, mask, confident, n, ctx.generator)
                if shard is not None and contexts is not None:
                    contexts = (shard.local(contexts[0]), shard.local(contexts[1]))
                if self._ranks_must_agree(ctx):  # fuse only when every rank can
                    contexts = contexts if ctx.shard.world.agree(contexts is not None) else None
        if contexts is not None:
            x_bal = self._fuse(balanced.x, contexts, ctx.generator, shard)
        else:
            x_bal = balanced.x if plain_phase else None
        # the fusion flag is decided on the host (a full bank is known so without a sync): a plain number;
        # the bank's fill is a device scalar (logging it waits for nothing)
        fill = self.bank.fill if self.bank is not None else 0.0
        return x_bal, {"pushed": pushed, "fused": 1.0 if contexts is not None else 0.0, "bank_fill": fill}

    def _ranks_must_agree(self, ctx: StepContext) -> bool:
        """Whether the ranks must take one decision to fuse: each decides from its own bank (or its own
        rows, without a bank), and a synchronised batch norm makes the balanced forward a collective that
        every rank runs or none (with ``joint_forward`` each runs one forward either way)."""
        return (ctx.shard is not None and ctx.shard.split and self.params.bank_scope == "rank"
                and not self.params.joint_forward and synchronises_batchnorm(self.backbone))

    def untrained_heads(self, history: list[dict]) -> set[str]:
        """As the dual branch; curves written before ``balanced_trained`` was logged are read from
        ``fused``: without a plain final phase the balanced head trains exactly on fused steps."""
        if any("balanced_trained" in record for record in history) or self.params.stop_last_epochs:
            return super().untrained_heads(history)
        fused = [record["fused"] for record in history if "fused" in record]
        return {"balanced", "ensemble"} if fused and not any(fused) else set()

    def untrained_hint(self, history: list[dict]) -> str:
        """Why no context was fused: warm-up as long as the run, or no image confident enough."""
        p = self.params
        if p.warmup_epochs >= self.epochs:
            return (f"method.params.warmup_epochs={p.warmup_epochs} leaves none of the run's {self.epochs} epochs to "
                    "fuse contexts in: lower it or train longer")
        return (f"no training image reached the uniform head's confidence method.params.delta={p.delta}, so no "
                "context was fused: lower it (e.g. method.params.delta=0.5) or train longer")

    def show_fused_batch(self, uniform_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], balanced_x: torch.Tensor,
                         lambdas: Iterable[float], generator: torch.Generator) -> FusedBatch:
        """Context shift of one balanced batch, as training does it, for showing: contexts of the
        uniform ``(x, y)`` batches (masks from the uniform head, filtered by ``delta``) fill a bank of
        the training capacity until it is full (or the batches run out); as many contexts as
        ``balanced_x`` has images are drawn with ``generator`` and fused at each fixed lambda."""
        bank, scanned = None, 0
        for x, y in uniform_batches:
            if bank is None:  # capacity from the first batch, as in training
                bank = ContextBank(self.params.bank_multiple * x.shape[0])
            mask, confident = self.extract_contexts(x, y)
            bank.push(x, mask, confident)
            scanned += len(y)
            if bank.is_full:
                break
        if bank is None or len(bank) == 0:
            raise NoConfidentImage(f"no training image reaches the CSA uniform head's confidence delta={self.params.delta}; "
                               "train longer (train.epochs=...)")
        contexts, masks = bank.draw(balanced_x.shape[0], generator)
        with torch.no_grad():
            fused = {lam: fuse_context(balanced_x, contexts, masks, lam) for lam in lambdas}
        return FusedBatch(contexts, masks, fused, scanned, len(bank), bank.capacity)

    def illustration(self, images: TrainingImages) -> list[tuple[str, np.ndarray]] | None:
        """Figure 5's context shift with the current model; nothing until an image is confident enough."""
        try:
            return context_shift_example(self, images, ILLUSTRATION_SHOWN, FIGURE3_LAMBDAS)[0]
        except NoConfidentImage:
            return None

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
