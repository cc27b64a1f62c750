"""Classification losses by name, each a small module of its own. Importing this package registers them all."""
from . import balanced_softmax, class_balanced, cross_entropy, drw, focal, ldam, logit_adjusted  # noqa: F401
from .base import LOSSES, Loss, build_loss, check_loss_params, effective_number_weights

__all__ = ["LOSSES", "Loss", "build_loss", "check_loss_params", "effective_number_weights"]
