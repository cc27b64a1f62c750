"""Optimizers by name (``train.optim.name``): each builds from the parameters to train, the
stage's learning rate and the run's ``train.optim`` section."""
from __future__ import annotations

import torch

from .registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(parameters, lr: float, cfg) -> torch.optim.Optimizer:
    """SGD with ``momentum``, ``weight_decay`` (L2, added to the gradient) and ``nesterov``."""
    return torch.optim.SGD(parameters, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


@OPTIMIZERS.register("adamw")
def adamw(parameters, lr: float, cfg) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019) with ``betas`` and decoupled ``weight_decay``; momentum is not used."""
    return torch.optim.AdamW(parameters, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_optimizer(parameters, lr: float, cfg) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(parameters, lr, cfg)
