"""Backbones by name: ``create_model(name, in_channels=..., image_size=...)``."""
from __future__ import annotations

from ..registry import Registry
from .base import Backbone
from .lenet import LeNet2d

MODELS: Registry = Registry("model")
MODELS.register("lenet2d")(LeNet2d)


def create_model(name: str, **kwargs) -> Backbone:
    return MODELS.get(name)(**kwargs)


__all__ = ["Backbone", "MODELS", "create_model"]
