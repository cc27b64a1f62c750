"""Backbones by name: ``create_model(name, in_channels=..., image_size=...)``."""
from __future__ import annotations

from ..registry import Registry
from .base import Backbone
from .lenet import LeNet2d
from .pretrained import load_pretrained
from .resnet import resnet10, resnet18, resnet50, resnet152, resnet152_frozen
from .resnet_cifar import resnet20, resnet32, resnet44, resnet56
from .torchvision_backbone import torchvision_builder

MODELS: Registry = Registry("model")
MODELS.register("lenet2d")(LeNet2d)
MODELS.register("resnet20")(resnet20)
MODELS.register("resnet32")(resnet32)
MODELS.register("resnet44")(resnet44)
MODELS.register("resnet56")(resnet56)
MODELS.register("resnet10")(resnet10)
MODELS.register("resnet18")(resnet18)
MODELS.register("resnet50")(resnet50)
MODELS.register("resnet152")(resnet152)
MODELS.register("resnet152-frozen")(resnet152_frozen)
MODELS.register_family("torchvision", torchvision_builder)


def create_model(name: str, pretrained: str | None = None, **kwargs) -> Backbone:
    """A backbone by name; ``pretrained``: a local weights file loaded into it (or into the part
    that takes them, ``pretrained_target``)."""
    model = MODELS.get(name)(**kwargs)
    if pretrained is not None:
        load_pretrained(model.pretrained_target(), pretrained, model.pretrained_ignored)
    elif model.needs_pretrained:
        raise ValueError(f"model {name} keeps its pretrained body frozen: pass model.pretrained=PATH "
                         "(e.g. torchvision's ImageNet weights file)")
    return model


__all__ = ["Backbone", "MODELS", "create_model"]
