"""LeNet-2d: LeNet-5 with a 2-d linear embedding before the classifier (paper Sec. 2.2.3)."""
from __future__ import annotations

import torch
from torch import nn

from .base import MODELS, Backbone, kaiming_init
from .ops import conv2d_s2dh_input_grad, conv5x5_pad2_s2dw, relu_max_pool2x2


@MODELS.register("lenet2d")
class LeNet2d(Backbone):
    """conv(5x5, C->6, pad 2) pool ReLU, conv(5x5, 6->16) pool ReLU, 400-120-84-2.

    ReLU follows the 2x2 max pool (the same function and gradient as before it,
    on a 4x smaller tensor). The last linear layer has no activation: its 2-d
    output is the embedding Figure 2 plots. The feature map for CAM is the second
    conv stage (16 x 5 x 5 after pooling, for 28 x 28 inputs).

    On CPU ``feature_map`` runs the hand-written path of ``ops.py`` (same
    parameters, same function, gradients equal up to float rounding; see
    ``benchmarks/lenet_step.py``); elsewhere, or with ``use_fast_path = False``,
    it runs the plain modules below.
    """

    #: Set to False (on the class or an instance) to always run the plain modules.
    use_fast_path: bool = True

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
        self.head_init = "kaiming"  # the reference LeNet-2d inits every linear layer Kaiming-normal
        kaiming_init(self)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_fast_path and x.device.type == "cpu" and x.dim() == 4 and x.shape[3] % 2 == 0:
            conv1, conv2, pool2, relu2 = self.stage1[0], *self.stage2
            x = relu_max_pool2x2(conv5x5_pad2_s2dw(x, conv1.weight, conv1.bias))
            # Stage 2 keeps nn.MaxPool2d: with 16 channels it is as fast as the hand-written pool.
            return relu2(pool2(conv2d_s2dh_input_grad(x, conv2.weight, conv2.bias)))
        return self.stage2(self.stage1(x))

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.fc(feature_map)
