"""Learning-rate schedules by name (``train.optim.schedule``, a stage's ``schedule``).

Each is a function ``(base_lr, progress, epochs, warmup, period, cfg) -> lr`` registered where it is
defined: ``progress`` is the (fractional) number of epochs into the stage, ``epochs`` the stage's
length, ``warmup`` the epochs of linear warm-up that opened it (0: none; the engine runs the warm-up
itself), ``period`` ``cosine_epoch``'s divisor (None: ``epochs``) and ``cfg`` the run's ``train.optim``.
"""
from __future__ import annotations

import math

from .registry import Registry

SCHEDULES: Registry = Registry("schedule")


@SCHEDULES.register("constant")
def constant(base_lr: float, progress: float, epochs: int, warmup: float, period: int | None, cfg) -> float:
    """The base rate throughout."""
    return base_lr


@SCHEDULES.register("cosine")
def cosine(base_lr: float, progress: float, epochs: int, warmup: float, period: int | None, cfg) -> float:
    """Smooth (per step) cosine decay from the end of the warm-up to 0 at the stage's end."""
    t = (progress - warmup) / max(epochs - warmup, 1e-8)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


@SCHEDULES.register("cosine_epoch")
def cosine_epoch(base_lr: float, progress: float, epochs: int, warmup: float, period: int | None, cfg) -> float:
    """The authors' release: set once per epoch, epoch e (0-based) trains at base * (1 + cos(pi * e / period)) / 2."""
    return base_lr * 0.5 * (1 + math.cos(math.pi * math.floor(progress) / (period or epochs)))


@SCHEDULES.register("step")
def step(base_lr: float, progress: float, epochs: int, warmup: float, period: int | None, cfg) -> float:
    """The base rate times ``cfg.gamma`` for every milestone (an epoch) passed."""
    passed = sum(progress >= m for m in cfg.milestones)
    return base_lr * cfg.gamma**passed


#: BBN's warm-up as its configs/cifar10.yaml sets up WarmupMultiStepLR: WARM_EPOCH 5, warmup_factor its default 1/3
BBN_WARMUP_EPOCHS, BBN_WARMUP_FACTOR = 5, 1.0 / 3


@SCHEDULES.register("bbn_multistep")
def bbn_multistep(base_lr: float, progress: float, epochs: int, warmup: float, period: int | None, cfg) -> float:
    """BBN's release (Megvii-Nanjing/BBN lib/utils/lr_scheduler.py, WarmupMultiStepLR, stepped before each
    1-based epoch k = e + 1 by main/train.py): set once an epoch, the base rate times ``cfg.gamma`` for every
    milestone <= k (milestones count 1-based epochs), times its own warm-up while k < 5, from 1/3 of the rate
    linearly (the engine's warm-up, from 0, stays off: ``warmup_epochs`` 0)."""
    k = math.floor(progress) + 1
    factor = 1.0
    if k < BBN_WARMUP_EPOCHS:
        alpha = k / BBN_WARMUP_EPOCHS
        factor = BBN_WARMUP_FACTOR * (1 - alpha) + alpha
    return base_lr * factor * cfg.gamma ** sum(m <= k for m in cfg.milestones)
