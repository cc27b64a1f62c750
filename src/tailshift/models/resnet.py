"""ImageNet ResNets (He et al. 2016), written from scratch: ResNet-10/18 (basic), ResNet-50/152
(bottleneck), and a frozen pretrained body with one trainable block on top (Places-LT).

ResNet-10 ([1, 1, 1, 1] basic blocks) is the small ImageNet-LT backbone of
Liu et al. 2019 and the CSA paper; torchvision has none, hence no dependency on it.
Bottlenecks stride in the 3x3 conv (the common "v1.5" layout), so torchvision's
weights load by name (``models/pretrained.py``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, Backbone, kaiming_init


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Option-B shortcut (1x1 conv + BN) where shape changes, identity elsewhere."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; ``shortcut(in, out, stride)`` builds the
    latter (option B here, option A for the CIFAR ResNets)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: Callable[[int, int, int], nn.Module] = _projection):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Backbone):
    """7x7/2 stem + 3x3/2 max-pool, four stages (64, 128, 256, 512 planes; strides 1, 2, 2, 2).

    ``feature_map`` is layer4 (7 x 7 at 224 x 224 input); ``embed`` is global
    average pooling, so CAM is defined. ``image_size`` is accepted for a
    uniform ``create_model`` call; the network is size-agnostic.
    """

    pooled_linear = True

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        image_size: int = 224,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        planes_in = 64
        stages = []
        for planes, blocks, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2)):
            stage = [block(planes_in, planes, stride)]
            planes_in = planes * block.expansion
            stage += [block(planes_in, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_dim = planes_in
        kaiming_init(self)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.mean(dim=(2, 3))


@MODELS.register("resnet10")
def resnet10(in_channels: int = 3, image_size: int = 224) -> ResNet:
    return ResNet(BasicBlock, (1, 1, 1, 1), in_channels, image_size)


@MODELS.register("resnet18")
def resnet18(in_channels: int = 3, image_size: int = 224) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, image_size)


@MODELS.register("resnet50")
def resnet50(in_channels: int = 3, image_size: int = 224) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, image_size)


@MODELS.register("resnet152")
def resnet152(in_channels: int = 3, image_size: int = 224) -> ResNet:
    return ResNet(Bottleneck, (3, 8, 36, 3), in_channels, image_size)


class FrozenBodyExtraBlock(Backbone):
    """A pretrained ResNet kept frozen (no gradients, batch norm always in eval mode) with one
    trainable residual block of its own kind on its last stage: the CSA release's Places-LT
    backbone (an ImageNet-pretrained ResNet-152). The weights load into ``body``
    (``pretrained_target``); without them the frozen body would be random, so they are required.
    """

    pooled_linear = True
    needs_pretrained = True

    def __init__(self, body: ResNet):
        super().__init__()
        self.body = body
        block = type(body.layer4[0])
        self.extra = block(body.out_dim, body.out_dim // block.expansion)
        kaiming_init(self.extra)
        self.out_dim = body.out_dim
        self.body.requires_grad_(False)

    def pretrained_target(self) -> nn.Module:
        return self.body

    def requires_grad_(self, requires_grad: bool = True) -> "FrozenBodyExtraBlock":
        """Only the extra block follows (a method unfreezing "the backbone" leaves the body frozen)."""
        self.extra.requires_grad_(requires_grad)
        return self

    def train(self, mode: bool = True) -> "FrozenBodyExtraBlock":
        super().train(mode)
        self.body.eval()
        return self

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.body.feature_map(x)
        return self.extra(x)

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.mean(dim=(2, 3))


@MODELS.register("resnet152-frozen")
def resnet152_frozen(in_channels: int = 3, image_size: int = 224) -> FrozenBodyExtraBlock:
    return FrozenBodyExtraBlock(resnet152(in_channels, image_size))
