"""BCL: balanced contrastive learning (Zhu et al., CVPR 2022), the base of the paper's Table 11."""
from __future__ import annotations

from dataclasses import dataclass

from ..validation import bounded
from .base import METHODS, StepContext, StepOutput
from .contrastive import BalancedContrastive, contrastive_params_field
from .erm import ERM


@METHODS.register("bcl")
class BalancedContrastiveLearning(ERM):
    """Zhu et al. 2022, Eq. 9: L = alpha L_LC + beta L_BCL. L_LC: the logit-compensated (logit-adjusted,
    tau = 1) CE of the batch; L_BCL: ``balanced_contrastive_loss`` of two further views, with the class
    prototypes taken from the classifier's weights. Uniform sampling; predicts with the classifier.
    Defaults alpha = 2, beta = 0.6, T = 0.1, 128-d projection: BCL's CIFAR settings as circulated with its
    code (its ImageNet-LT release uses alpha 1, beta 0.35, T 0.07); check them before comparing numbers."""

    @dataclass
    class Params(ERM.Params):
        loss: str = "la"
        loss_weight: float = bounded(2.0, ge=0)  # alpha
        contrastive_weight: float = bounded(0.6, ge=0)  # beta
        contrastive_params: dict = contrastive_params_field()

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        self.contrastive = BalancedContrastive(backbone.out_dim, self.params.contrastive_weight,
                                               self.params.contrastive_params)

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        batch = batches["main"]
        supervised = self.loss(self.head(self.backbone(batch.x)), batch.y)
        contrastive, logs = self.contrastive.term(self.backbone, batch, self.head, ctx.generator)
        return StepOutput(self.params.loss_weight * supervised + contrastive,
                          {"loss_supervised": supervised.detach(), **logs})
