"""BBN: the bilateral-branch network with cumulative learning (Zhou et al., CVPR 2020)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import METHODS, Method, Stage, StepContext, StepOutput, StreamRequest
from .losses import LossOptions, loss_field


@METHODS.register("bbn")
class BilateralBranch(Method):
    """Two branches share the backbone up to its last block: the conventional branch (the backbone's
    own last block) on uniformly shuffled batches, the re-balancing branch (its own last block) on
    batches from the reversed sampler (class probability proportional to 1 / n_c, Eq. 1).

    Cumulative learning (Sec. 3.3, Eq. 2-4): alpha = 1 - (T / T_max)^2 at epoch T (0-based),
    z = W_c (alpha f_c) + W_r ((1 - alpha) f_r) and L = alpha E(p, y_c) + (1 - alpha) E(p, y_r),
    with one classifier W = [W_c, W_r] on the concatenated features. As the authors' release, the
    mixed features are doubled (2 alpha f_c, 2 (1 - alpha) f_r), so that at inference, where both
    branches are weighted equally (alpha = 0.5), the classifier reads [f_c, f_r] itself.
    """

    @dataclass
    class Params(LossOptions):
        loss: str = loss_field("ce")

    default_head = "main"
    reads_feature_map = "its second last block's map, embedded"

    def __init__(self, backbone, num_classes, class_counts, epochs, params=None):
        super().__init__(backbone, num_classes, class_counts, epochs, params)
        self.loss = self.params.build_loss("loss", class_counts)
        self.rebalancing_block = backbone.new_last_block()
        self.head = backbone.new_head(num_classes, 2 * backbone.out_dim)

    def stages(self) -> list[Stage]:
        return [Stage("train", self.epochs, {"uniform": StreamRequest("uniform"), "reversed": StreamRequest("reversed")},
                      driver="uniform")]

    def branch_features(self, x: torch.Tensor, rebalancing: bool) -> torch.Tensor:
        block = self.rebalancing_block if rebalancing else self.backbone.last_block()
        return self.backbone.embed(block(self.backbone.trunk(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        trunk = self.backbone.trunk(x)
        embed = self.backbone.embed
        return torch.cat([embed(self.backbone.last_block()(trunk)), embed(self.rebalancing_block(trunk))], dim=1)

    @staticmethod
    def cumulative_weight(epoch: int, epochs: int) -> float:
        """alpha = 1 - (T / T_max)^2, T the 0-based epoch (the release: (epoch - 1) / max_epoch, 1-based)."""
        return 1.0 - (epoch / epochs) ** 2

    def training_step(self, batches, ctx: StepContext) -> StepOutput:
        conventional, reversed_ = batches["uniform"], batches["reversed"]
        alpha = self.cumulative_weight(ctx.epoch, ctx.stage.epochs)
        mixed = torch.cat([2 * alpha * self.branch_features(conventional.x, False),
                           2 * (1 - alpha) * self.branch_features(reversed_.x, True)], dim=1)
        logits = self.head(mixed)
        loss = alpha * self.loss(logits, conventional.y) + (1 - alpha) * self.loss(logits, reversed_.y)
        return StepOutput(loss, {"alpha": alpha})

    def heads(self):
        return {"main": self.head}
