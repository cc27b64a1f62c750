"""Classification losses by name, each a small module of its own. Importing this package registers them all."""
from . import balanced_softmax, class_balanced, cross_entropy, drw, focal, ldam, logit_adjusted  # noqa: F401
from .base import LOSSES, Loss, LossOptions, build_loss, effective_number_weights, loss_field, outermost_losses

__all__ = ["LOSSES", "Loss", "LossOptions", "build_loss", "effective_number_weights", "loss_field", "outermost_losses"]
