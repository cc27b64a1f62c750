"""Long-tail losses for your own training loop: ``nn.Module``s built from the training class counts.

The same modules tailshift's methods train with (``tailshift.methods.losses``), under public
names with their parameters as keyword arguments (defaults: the papers' / the release's).
Call ``loss(logits, targets)``; a loss that changes with training (DRW, or a class-balanced
loss wrapping it) needs ``loss.begin_epoch(epoch, epochs)`` before every epoch (0-based
``epoch``), a no-op for the others. ``build_loss(name, class_counts, **params)`` builds one
by the name a config uses (``method.params.loss``), with that config's ``loss_params``.
"""
from __future__ import annotations

import dataclasses

from .methods.losses import LOSSES
from .methods.losses.balanced_softmax import BalancedSoftmax
from .methods.losses.class_balanced import ClassBalanced
from .methods.losses.cross_entropy import CrossEntropy
from .methods.losses.drw import DeferredReweighting
from .methods.losses.focal import Focal
from .methods.losses.ldam import LDAM
from .methods.losses.logit_adjusted import LogitAdjusted
from .metrics import class_counts_array

__all__ = ["BalancedSoftmaxLoss", "ClassBalancedLoss", "CrossEntropyLoss", "DRWLoss", "FocalLoss", "LDAMLoss",
           "LOSS_CLASSES", "LogitAdjustedLoss", "build_loss"]


class CrossEntropyLoss(CrossEntropy):
    """Softmax cross-entropy, the batch mean."""

    def __init__(self, class_counts):
        super().__init__(class_counts_array(class_counts), {}, type(self).__name__)


class FocalLoss(Focal):
    """Lin et al. 2017: -(1 - p_t)^gamma log p_t; ``activation`` softmax (one term per sample) or
    sigmoid (one binary term per class, summed: Lin et al.'s own form)."""

    def __init__(self, class_counts, *, gamma: float = Focal.Params.gamma,
                 activation: str = Focal.Params.activation):
        super().__init__(class_counts_array(class_counts), {"gamma": gamma, "activation": activation},
                         type(self).__name__)


class LDAMLoss(LDAM):
    """Cao et al. 2019: cross-entropy of ``scale`` (z - Delta_y e_y) with margins Delta_c proportional
    to n_c^(-1/4), the largest ``max_margin``. Meant for cosine logits (a normalised classifier)."""

    def __init__(self, class_counts, *, max_margin: float = LDAM.Params.max_margin,
                 scale: float = LDAM.Params.scale):
        super().__init__(class_counts_array(class_counts), {"max_margin": max_margin, "scale": scale},
                         type(self).__name__)


class LogitAdjustedLoss(LogitAdjusted):
    """Menon et al. 2021: cross-entropy of z + tau log(prior); predict with the plain logits."""

    def __init__(self, class_counts, *, tau: float = LogitAdjusted.Params.tau):
        super().__init__(class_counts_array(class_counts), {"tau": tau}, type(self).__name__)


class BalancedSoftmaxLoss(BalancedSoftmax):
    """Ren et al. 2020: cross-entropy of z + log n (the logit-adjusted loss at tau = 1)."""

    def __init__(self, class_counts):
        super().__init__(class_counts_array(class_counts), {}, type(self).__name__)


class ClassBalancedLoss(ClassBalanced):
    """Cui et al. 2019: the loss named ``loss`` (built with ``loss_params``) weighted per sample by
    (1 - beta) / (1 - beta^n_y), the weights summing to C (ce: CB-CE; focal: CB-Focal)."""

    def __init__(self, class_counts, *, beta: float = ClassBalanced.Params.beta,
                 loss: str = ClassBalanced.Params.loss, loss_params: dict | None = None):
        super().__init__(class_counts_array(class_counts),
                         {"beta": beta, "loss": loss, "loss_params": loss_params or {}}, type(self).__name__)


class DRWLoss(DeferredReweighting):
    """Cao et al. 2019, deferred re-weighting: the loss named ``loss`` unweighted until epoch
    ``start_epoch``, then class-weighted by the effective number (beta). Needs ``begin_epoch``."""

    def __init__(self, class_counts, *, start_epoch: int = DeferredReweighting.Params.start_epoch,
                 beta: float = DeferredReweighting.Params.beta, loss: str = DeferredReweighting.Params.loss,
                 loss_params: dict | None = None):
        super().__init__(class_counts_array(class_counts), {"start_epoch": start_epoch, "beta": beta, "loss": loss,
                                                            "loss_params": loss_params or {}}, type(self).__name__)


#: the public class of each loss, by the name configs use
LOSS_CLASSES = {
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "ldam": LDAMLoss,
    "la": LogitAdjustedLoss,
    "balanced-softmax": BalancedSoftmaxLoss,
    "class-balanced": ClassBalancedLoss,
    "drw": DRWLoss,
}


def build_loss(name: str, class_counts, **params):
    """The loss a config names (``ce``, ``focal``, ``ldam``, ``la``, ``balanced-softmax``,
    ``class-balanced``, ``drw``) with that config's ``loss_params`` as keyword arguments."""
    LOSSES.get(name)  # an unknown name: one line listing the known ones
    cls = LOSS_CLASSES[name]
    known = [f.name for f in dataclasses.fields(cls.Params)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown {name} loss param {unknown[0]!r}; known: {', '.join(known) or '(none)'}")
    return cls(class_counts, **params)
