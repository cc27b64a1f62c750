"""CIFAR ResNets (He et al. 2016, Sec. 4.2): depth 6n+2, 16/32/64 channels, option-A shortcuts.

This is the ResNet-32 of the long-tail literature (LDAM, BBN, CSA): about
0.46M parameters, with parameter-free shortcuts so its size matches the
published numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, Backbone, kaiming_init
from .resnet import BasicBlock


class ShortcutA(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        # Zeros go on both sides of the channel axis, as in the original CIFAR ResNet.
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], self.pad)


def option_a_shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Identity where the shape is kept, else the parameter-free option-A shortcut."""
    if stride != 1 or in_planes != planes:
        return ShortcutA(in_planes, planes, stride)
    return nn.Identity()


def cifar_basic_block(in_planes: int, planes: int, stride: int = 1) -> BasicBlock:
    """The CIFAR basic block: two 3x3 conv-BN layers with an option-A shortcut."""
    return BasicBlock(in_planes, planes, stride, shortcut=option_a_shortcut)


class CifarResNet(Backbone):
    """conv3x3(16) BN ReLU, then three stages of n blocks (16, 32, 64 channels; strides 1, 2, 2).

    ``feature_map`` is the third stage (64 x 8 x 8 for 32 x 32 inputs);
    ``embed`` is global average pooling, so CAM is defined.
    ``image_size`` is accepted for a uniform ``create_model`` call; the network is size-agnostic.
    """

    pooled_linear = True

    def __init__(self, depth: int = 32, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.out_dim = 64
        self.head_init = "kaiming"  # the reference CIFAR ResNets init every linear layer Kaiming-normal
        kaiming_init(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [cifar_basic_block(in_planes, planes, stride)]
        layers += [cifar_basic_block(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.mean(dim=(2, 3))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3[:-1](self.layer2(self.layer1(self.stem(x))))

    def last_block(self) -> nn.Module:
        return self.layer3[-1]

    def new_last_block(self) -> nn.Module:
        block = cifar_basic_block(self.out_dim, self.out_dim)
        kaiming_init(block)
        return block


@MODELS.register("resnet20")
def resnet20(in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    return CifarResNet(20, in_channels, image_size)


@MODELS.register("resnet32")
def resnet32(in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    return CifarResNet(32, in_channels, image_size)


@MODELS.register("resnet44")
def resnet44(in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    return CifarResNet(44, in_channels, image_size)


@MODELS.register("resnet56")
def resnet56(in_channels: int = 3, image_size: int = 32) -> CifarResNet:
    return CifarResNet(56, in_channels, image_size)
