"""LeNet-2d: LeNet-5 with a 2-d linear embedding before the classifier (paper Sec. 2.2.3)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, kaiming_init


class LeNet2d(Backbone):
    """conv(5x5, C->6, pad 2) ReLU pool, conv(5x5, 6->16) ReLU pool, 400-120-84-2.

    The last linear layer has no activation: its 2-d output is the embedding
    Figure 2 plots. The feature map for CAM is the second conv stage (16 x 5 x 5
    after pooling, for 28 x 28 inputs).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, embed_dim: int = 2):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU())
        side = ((image_size // 2) - 4) // 2
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, embed_dim),
        )
        self.out_dim = embed_dim
        kaiming_init(self)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(x))

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.fc(feature_map)
