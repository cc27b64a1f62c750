"""Backbones by name: ``create_model(name, in_channels=..., image_size=...)``. Importing this package
registers every built-in backbone (each definition carries its ``@MODELS.register``)."""
from __future__ import annotations

import inspect

# each module registers its backbones
from . import clip_backbone, lenet, resnet, resnet_cifar, timm_backbone, torchvision_backbone  # noqa: F401
from .base import MODELS, READOUTS, Backbone
from .pretrained import load_pretrained
from .timm_backbone import check_timm_args
from .tuning import TUNE_MODES, TunedBackbone

def from_hub(pretrained: str | None) -> bool:
    """Whether ``model.pretrained`` asks for the model library's own download (``hub`` or ``hub:TAG``), not a file."""
    return pretrained is not None and pretrained.split(":")[0] == "hub"


def create_model(name: str, pretrained: str | None = None, tune: str = "full", tune_dim: int | None = None,
                 vpt_length: int = 10, num_classes: int = 1, readout: str = "avg", timm_args: dict | None = None,
                 **kwargs) -> Backbone:
    """A backbone by name; ``pretrained``: a local weights file loaded into it (or into the part that takes
    them, ``pretrained_target``), ``hub`` (the model library's own download: timm, open_clip) or None.
    ``tune``: which of its parameters train (``models/tuning.py``; ``full``: all). ``readout``: how a vision
    transformer's embedding is read out (``READOUTS``; other backbones take ``avg`` only). ``timm_args``:
    keyword arguments of timm.create_model (``timm:NAME`` models only)."""
    if readout not in READOUTS:
        raise ValueError(f"model.readout must be one of {', '.join(READOUTS)}; got {readout!r}")
    factory = MODELS.get(name)
    if timm_args:
        check_timm_args(name, timm_args)
        kwargs["timm_args"] = timm_args
    parameters = inspect.signature(factory).parameters
    downloads = "pretrained" in parameters
    if from_hub(pretrained) and not downloads:
        raise ValueError(f"model.pretrained={pretrained} needs a model whose library downloads weights (timm:NAME, "
                         f"clip:NAME); model.name={name} takes a local file (model.pretrained=PATH)")
    if "readout" in parameters:
        kwargs["readout"] = readout
    elif readout != "avg":
        raise ValueError(f"model.readout={readout} needs a vision transformer that reads out its class token "
                         f"(timm:NAME, clip:NAME); model.name={name} has none (use model.readout=avg)")
    model = factory(pretrained=pretrained, **kwargs) if downloads else factory(**kwargs)
    if pretrained is not None and not from_hub(pretrained):
        target = model.pretrained_target()
        within = next(f"{path}." for path, module in model.named_modules() if module is target).lstrip(".")
        load_pretrained(target, pretrained, model.pretrained_ignored, within)
    elif pretrained is None and model.needs_pretrained:
        raise ValueError(f"model {name} keeps its pretrained body frozen: pass model.pretrained=PATH "
                         "(e.g. torchvision's ImageNet weights file)")
    if tune != "full":
        model = TunedBackbone(model, tune, tune_dim, vpt_length, num_classes, name)
    return model


def build_backbone(model_cfg, in_channels: int, image_size: int, num_classes: int) -> Backbone:
    """The backbone a run's ``model`` section describes, for images of ``in_channels`` x ``image_size``."""
    return create_model(model_cfg.name, pretrained=model_cfg.pretrained, tune=model_cfg.tune,
                        tune_dim=model_cfg.tune_dim, vpt_length=model_cfg.vpt_length, num_classes=num_classes,
                        timm_args=model_cfg.timm_args, readout=model_cfg.readout, in_channels=in_channels,
                        image_size=image_size)


__all__ = ["Backbone", "MODELS", "TUNE_MODES", "build_backbone", "create_model"]
