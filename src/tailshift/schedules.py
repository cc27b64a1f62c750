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
