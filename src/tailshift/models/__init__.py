"""Backbones by name: ``create_model(name, in_channels=..., image_size=...)``."""
from __future__ import annotations

from ..registry import Registry
from .base import Backbone
from .lenet import LeNet2d
from .resnet import resnet10, resnet18, resnet50
from .resnet_cifar import resnet20, resnet32, resnet44, resnet56

MODELS: Registry = Registry("model")
MODELS.register("lenet2d")(LeNet2d)
MODELS.register("resnet20")(resnet20)
MODELS.register("resnet32")(resnet32)
MODELS.register("resnet44")(resnet44)
MODELS.register("resnet56")(resnet56)
MODELS.register("resnet10")(resnet10)
MODELS.register("resnet18")(resnet18)
MODELS.register("resnet50")(resnet50)


def create_model(name: str, **kwargs) -> Backbone:
    return MODELS.get(name)(**kwargs)


__all__ = ["Backbone", "MODELS", "create_model"]
