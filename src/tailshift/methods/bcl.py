"""BCL: balanced contrastive learning (Zhu et al., CVPR 2022), the base of the paper's Table 11."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import bounded, one_of
from .base import METHODS, StepContext, StepOutput
from .contrastive import BalancedContrastive, contrastive_params_field
from .erm import ERM
from .heads import CLASSIFIERS


@METHODS.register("bcl")
class BalancedContrastiveLearning(ERM):
    """Zhu et al. 2022, Eq. 9: L = alpha L_LC + beta L_BCL. L_LC: the logit-compensated (logit-adjusted,
    tau = 1) CE of the batch; L_BCL: ``balanced_contrastive_loss`` of two strong views of each stored image,
    with the class prototypes taken from the classifier's weights. The batch and its views go through the
    backbone as one batch, as BCL's train loop does (FlamieZhu/Balanced-Contrastive-Learning@f72d070 main.py
    lines 301-311: one forward of the three crops, alpha CE + beta SCL). Uniform sampling; predicts with the
    classifier: by default BCL's NormedLinear, ``classifier_scale`` (30) times the cosines
    (models/resnext.py lines 8-18, use_norm True: main.py line 66), so ``classifier_scale`` applies to a cosine
    classifier only. Defaults alpha = 2, beta = 0.6, T = 0.1, 128-d projection: BCL's CIFAR settings as
    circulated with its paper, not in its code, which holds only its ImageNet-LT ones (alpha 1, beta 0.35,
    T 0.07: main.py lines 30, 55-56); check them before comparing numbers."""

    @dataclass
    class Params(ERM.Params):
        loss: str = "la"
        classifier: str = one_of("cosine", CLASSIFIERS)
        classifier_scale: float = bounded(30.0, gt=0, note="the cosine classifier's s")
        loss_weight: float = bounded(2.0, ge=0)  # alpha
        contrastive_weight: float = bounded(0.6, ge=0)  # beta
        contrastive_params: dict = contrastive_params_field()

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        self.contrastive = BalancedContrastive(backbone.out_dim, self.params.contrastive_weight,
                                               self.params.contrastive_params)

    def reads_stored_images(self) -> bool:
        return True

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        batch = batches["main"]
        views = self.contrastive.views(batch, ctx.generator)
        features, view_features = self.backbone(torch.cat([batch.x, views])).split([batch.x.shape[0], views.shape[0]])
        supervised = self.loss(self.head(features), batch.y)
        contrastive, logs = self.contrastive.term(view_features, self.head, batch.y)
        return StepOutput(self.params.loss_weight * supervised + contrastive,
                          {"loss_supervised": supervised.detach(), **logs})
