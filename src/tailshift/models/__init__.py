"""Backbones by name: ``create_model(name, in_channels=..., image_size=...)``. Importing this package
registers every built-in backbone (each definition carries its ``@MODELS.register``)."""
from __future__ import annotations

from . import lenet, resnet, resnet_cifar, torchvision_backbone  # noqa: F401  (registration side effect)
from .base import MODELS, Backbone
from .pretrained import load_pretrained


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
