"""The training loop: stages, streams, optimisation, evaluation, checkpoints.

The engine knows only the ``Method`` interface; it never branches on a method's
name. All randomness is derived from (seed, stage, epoch), so a run killed at
any point resumes from its last epoch checkpoint and replays exactly.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .config import RunConfig, save_config
from .data.build import PreparedData, prepare_data
from .data.pipeline import DeviceArrays
from .data.sampling import Sampler
from .data.sources import DATASETS
from .methods import METHODS, Method
from .methods.base import Stage, StepContext, stream_spec
from .metrics import summarize
from .models import MODELS, create_model
from .optim import OPTIMIZERS, build_optimizer


#: draw ids reserved per epoch for a secondary stream's passes (a stream cycled beside the first)
SECONDARY_PASSES_PER_EPOCH = 100_003


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by another configuration."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def derive_seed(*parts) -> int:
    """A 63-bit seed from the run seed and labels such as ("augment", stage, epoch)."""
    return int(np.random.SeedSequence([zlib.crc32(str(p).encode()) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def learning_rate(optim_cfg, base_lr: float, schedule: str, epochs: int, progress: float, period: int | None = None,
                  warmup: bool = True) -> float:
    """LR at ``progress`` epochs into a stage (fractional, so schedules are smooth per step);
    ``warmup``: whether the run's linear warm-up (``optim_cfg.warmup_epochs``) opens the stage.

    ``cosine_epoch`` is the authors' release: the rate is set once per epoch, epoch e
    (0-based) training at base * (1 + cos(pi * e / period)) / 2; the engine passes the
    run's epoch count as the period for every stage (so cRT's 4-epoch re-training of an 8-epoch run
    trains at 0.1, 0.0962, 0.0854, 0.0691).
    """
    warmup = optim_cfg.warmup_epochs if warmup else 0
    if warmup and progress < warmup:
        return base_lr * (progress + 1e-8) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        t = (progress - warmup) / max(epochs - warmup, 1e-8)
        return base_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "cosine_epoch":
        return base_lr * 0.5 * (1 + math.cos(math.pi * math.floor(progress) / (period or epochs)))
    passed = sum(progress >= m for m in optim_cfg.milestones)
    return base_lr * optim_cfg.gamma**passed


def versions() -> dict:
    return {
        "tailshift": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


@dataclass
class RunState:
    stage_index: int = 0
    epoch: int = 0  # next epoch to run within the stage
    history: list = field(default_factory=list)
    train_seconds: float = 0.0


def check_names(cfg: RunConfig) -> None:
    """Fail on an unknown dataset, model or method name before any data is read."""
    DATASETS.get(cfg.data.dataset)
    MODELS.get(cfg.model.name)
    METHODS.get(cfg.method.name)
    OPTIMIZERS.get(cfg.train.optim.name)


def build_method(cfg: RunConfig, data: PreparedData) -> Method:
    channels, height, _ = data.image_shape
    backbone = create_model(cfg.model.name, in_channels=channels, image_size=height)
    method_cls = METHODS.get(cfg.method.name)
    return method_cls(backbone, data.num_classes, data.class_counts, cfg.train.epochs, cfg.method.params)


@torch.inference_mode()
def evaluate(method: Method, arrays: DeviceArrays, batch_size: int, num_classes: int, groups) -> dict:
    method.eval()
    preds: dict[str, list] = {}
    for batch in arrays.iterate(batch_size):
        for head, logits in method.predict(batch.x).items():
            preds.setdefault(head, []).append(logits.argmax(1).cpu())
    labels = arrays.labels.cpu().numpy()
    return {head: summarize(torch.cat(p).numpy(), labels, num_classes, groups) for head, p in preds.items()}


class Trainer:
    """Runs one config to completion, writing its run folder."""

    def __init__(self, cfg: RunConfig, data: PreparedData | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        check_names(cfg)
        self.data = data if data is not None else prepare_data(cfg.data)
        torch.manual_seed(cfg.seed)
        self.method = build_method(cfg, self.data).to(self.device)
        # channels-last is markedly faster for small convolutions on CPU (MKL-DNN) and for AMP on GPUs.
        self.method.to(memory_format=torch.channels_last)
        d = cfg.data
        self.train_arrays = DeviceArrays(self.data.train, self.device, d.mean, d.std, d.augment, d.padding)
        self.test_arrays = DeviceArrays(self.data.test, self.device, d.mean, d.std)
        self.out = Path(cfg.output)
        self.checkpoint_path = self.out / "checkpoint.pt"

    # --- checkpoints ------------------------------------------------------------
    def _save(self, state: RunState, optimizer: torch.optim.Optimizer) -> None:
        payload = {
            "fingerprint": self.cfg.fingerprint(),
            "stage_index": state.stage_index,
            "epoch": state.epoch,
            "history": state.history,
            "train_seconds": state.train_seconds,
            "method": self.method.state_dict(),
            "extra": self.method.extra_state(),
            "optimizer": optimizer.state_dict(),
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint_path)

    def _load(self) -> tuple[RunState, dict | None]:
        if not self.checkpoint_path.exists():
            return RunState(), None
        try:
            payload = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as err:  # a truncated or foreign file: say which and why
            raise CheckpointMismatchError(f"cannot read checkpoint {self.checkpoint_path}: {err}") from None
        if payload.get("fingerprint") not in (self.cfg.fingerprint(), self.cfg.legacy_fingerprint()):
            raise CheckpointMismatchError(
                f"checkpoint {self.checkpoint_path} was written by another config "
                f"(fingerprint {payload.get('fingerprint')} != {self.cfg.fingerprint()}); "
                "use a new output folder or delete the checkpoint"
            )
        self.method.load_state_dict(payload["method"])
        self.method.load_extra_state(payload["extra"])
        state = RunState(payload["stage_index"], payload["epoch"], payload["history"], payload["train_seconds"])
        return state, payload["optimizer"]

    # --- training -----------------------------------------------------------------
    def _samplers(self, stage: Stage, stage_index: int) -> dict[str, Sampler]:
        s = self.cfg.sampling
        labels = self.data.train.labels
        return {
            name: Sampler(labels, stream_spec(stage.streams[name], s.balanced, s.per_class, s.balanced_epoch),
                          self.cfg.seed, f"{stage_index}/{name}")
            for name in stage.stream_order()
        }

    def _epoch_indices(self, samplers: dict[str, Sampler], driver: str, epoch: int, steps: int,
                       batch: int) -> dict[str, torch.Tensor]:
        """The driver's epoch; the other streams cycle their own epochs to cover the same steps."""
        out = {}
        for name, sampler in samplers.items():
            if name == driver:
                idx = sampler.epoch_indices(epoch)
            else:
                parts, have, k = [], 0, 0
                while have < steps * batch:
                    # the k-th pass of this stream within the epoch gets its own draw id;
                    # the prime spacing keeps the ids of different epochs from colliding
                    part = sampler.epoch_indices(epoch * SECONDARY_PASSES_PER_EPOCH + k)
                    parts.append(part)
                    have += len(part)
                    k += 1
                idx = np.concatenate(parts)
            out[name] = torch.from_numpy(idx)
        return out

    def fit(self, resume: bool = True) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        state, optimizer_state = self._load() if resume else (RunState(), None)
        stages = self.method.stages()
        batch = cfg.train.batch_size
        optimizer, results = None, None
        for stage_index, stage in enumerate(stages):
            if stage_index < state.stage_index:
                continue
            fresh = state.epoch == 0
            self.method.begin_stage(stage, fresh)
            optimizer = build_optimizer(self.method.trainable_parameters(stage), stage.lr or cfg.train.optim.lr,
                                        cfg.train.optim)
            if optimizer_state is not None and not fresh:
                optimizer.load_state_dict(optimizer_state)
            optimizer_state = None
            samplers = self._samplers(stage, stage_index)
            steps = math.ceil(len(samplers[stage.driver]) / batch)
            for epoch in range(state.epoch, stage.epochs):
                started = time.perf_counter()
                logs = self._train_epoch(stage, stage_index, epoch, samplers, steps, optimizer)
                state.train_seconds += time.perf_counter() - started
                record = {"stage": stage.name, "epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 3), **logs}
                last = stage_index == len(stages) - 1 and epoch == stage.epochs - 1
                if last or (cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0):
                    results = self._evaluate()
                    record["test"] = {h: {k: r[k] for k in ("all", "many", "med", "few")} for h, r in results.items()}
                state.history.append(record)
                state.epoch = epoch + 1
                if state.epoch == stage.epochs:
                    state.stage_index, state.epoch = stage_index + 1, 0
                (self.out / "curve.json").write_text(json.dumps(state.history, indent=1))
                if cfg.train.checkpoint:
                    self._save(state, optimizer)
        return self._finish(state, results if results is not None else self._evaluate())

    def _train_epoch(self, stage, stage_index, epoch, samplers, steps, optimizer) -> dict:
        cfg = self.cfg
        batch = cfg.train.batch_size
        self.method.train_mode(stage)
        self.method.begin_epoch(stage, epoch)
        indices = self._epoch_indices(samplers, stage.driver, epoch, steps, batch)
        epoch_length = len(indices[stage.driver])
        dev = self.device
        aug_gen = torch.Generator(device=dev).manual_seed(derive_seed(cfg.seed, "augment", stage_index, epoch))
        method_gen = torch.Generator(device=dev).manual_seed(derive_seed(cfg.seed, "method", stage_index, epoch))
        base_lr = stage.lr or cfg.train.optim.lr
        schedule = stage.schedule or cfg.train.optim.schedule
        period = cfg.train.optim.cosine_period or cfg.train.epochs
        total = torch.zeros((), device=dev)
        sums: dict[str, torch.Tensor] = {}
        clip = cfg.train.optim.clip_grad_norm
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clipped = torch.zeros((), device=dev)  # steps whose gradient norm exceeded clip (kept on device: no sync)
        bar = tqdm(range(steps), desc=f"{stage.name} {epoch + 1}/{stage.epochs}", leave=False,
                   disable=None if cfg.progress else True, dynamic_ncols=True)  # None: off when not a terminal
        for step in bar:
            lr = learning_rate(cfg.train.optim, base_lr, schedule, stage.epochs, epoch + step / steps, period, stage.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            lo, hi = step * batch, min((step + 1) * batch, epoch_length)
            batches = {name: self.train_arrays.batch(idx[lo:hi], aug_gen) for name, idx in indices.items()}
            ctx = StepContext(stage, stage_index, epoch, step, method_gen)
            out = self.method.training_step(batches, ctx)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
                clipped = clipped + (norm > clip)
            optimizer.step()
            total += out.loss.detach()
            for key, value in out.logs.items():
                sums[key] = sums.get(key, 0.0) + (value.detach() if torch.is_tensor(value) else value)
        mean_loss = float(total) / steps
        if not math.isfinite(mean_loss):
            raise DivergenceError(
                f"non-finite training loss ({mean_loss}) in stage {stage.name!r} epoch {epoch + 1}; "
                "lower train.optim.lr or check the data"
            )
        logs = {"loss": round(mean_loss, 5), "lr": lr}
        logs.update({k: round(float(v) / steps, 5) for k, v in sums.items()})
        if clip > 0:
            logs["clipped"] = round(float(clipped) / steps, 5)
        return logs

    def _evaluate(self) -> dict:
        return evaluate(self.method, self.test_arrays, self.cfg.train.test_batch_size, self.data.num_classes, self.data.groups)

    def _finish(self, state: RunState, results: dict) -> dict:
        default = self.method.default_head
        metrics = {
            "config": self.cfg.to_dict(),
            "seed": self.cfg.seed,
            "fingerprint": self.cfg.fingerprint(),
            "versions": versions(),
            "device": str(self.device),
            "data_source": {"path": self.data.source, "caveat": self.data.caveat},
            "train_seconds": round(state.train_seconds, 3),
            "class_counts": self.data.class_counts.tolist(),
            "groups": {k: v.tolist() for k, v in self.data.groups.items()},
            "default_head": default,
            "result": results[default],
            "heads": results,
            "curve": state.history,
        }
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics


def train(cfg: RunConfig, data: PreparedData | None = None, resume: bool = True) -> dict:
    """Train one config; returns (and writes to ``cfg.output``/metrics.json) its metrics."""
    return Trainer(cfg, data).fit(resume=resume)
