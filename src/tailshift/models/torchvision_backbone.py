"""Any torchvision classification model as a ``Backbone`` (``model.name=torchvision:resnet50``, the
``tailshift[torchvision]`` extra). Built without weights; pretrained ones come only from a local file
(``model.pretrained=PATH``, torchvision's own state dict), so nothing is ever downloaded.

The model's classifier (its last ``nn.Linear``) gives way to the method's heads; what runs before it
is split where CAM needs it: ``feature_map`` is the last convolutional stage, ``embed`` the pooling
and any layers between it and the classifier, exactly as the model's own forward runs them.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import UnknownNameError
from .base import MODELS, Backbone

#: families without a convolutional map pooled into one linear layer (transformers; classifiers that are convs)
UNSUPPORTED_PREFIXES = ("vit_", "swin_", "maxvit_", "mnasnet", "squeezenet")
#: children of fc-classified models (ResNet, RegNet, ShuffleNet, GoogLeNet, Inception) that are not the body
NOT_BODY = ("avgpool", "dropout", "fc", "AuxLogits", "aux1", "aux2")


def _torchvision_models():
    try:
        import torchvision
    except ImportError:
        raise ValueError("model.name=torchvision:... needs torchvision: pip install tailshift[torchvision]") from None
    except (RuntimeError, OSError) as err:  # installed, but built for another torch (PyPI's CUDA build beside a CPU torch)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"torchvision does not import beside torch {torch.__version__} ({first_line}); install the "
                         "torchvision build made for this torch (for a CPU torch: pip install torchvision "
                         "--index-url https://download.pytorch.org/whl/cpu)") from None
    return torchvision.models


def torchvision_builder(arch: str):
    """The factory of ``torchvision:<arch>`` (the ``torchvision`` family of MODELS)."""
    models = _torchvision_models()
    allowed = [name for name in models.list_models(module=models) if not name.startswith(UNSUPPORTED_PREFIXES)]
    if arch not in allowed:
        raise UnknownNameError(f"unknown model 'torchvision:{arch}'; allowed torchvision names: {', '.join(allowed)}")
    return functools.partial(build_torchvision, arch)


MODELS.register_family("torchvision", torchvision_builder)


def build_torchvision(arch: str, in_channels: int = 3, image_size: int | None = None) -> "TorchvisionBackbone":
    return TorchvisionBackbone(_torchvision_models().get_model(arch, weights=None), in_channels)


class TorchvisionBackbone(Backbone):
    """A torchvision model split into ``feature_map`` and ``embed``; grey images are repeated to
    three channels (so ImageNet weights apply as they are)."""

    def __init__(self, net: nn.Module, in_channels: int = 3):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"torchvision models take 1 (repeated) or 3 image channels, got {in_channels}")
        self.grey = in_channels == 1
        self.net = net
        self.relu_after_body = False
        if isinstance(getattr(net, "fc", None), nn.Linear):  # ResNet-like: children in forward order, then a mean
            classifier, self.pretrained_ignored = net.fc, ("fc.",)
            net.fc = nn.Identity()
            self.body = [name for name, _ in net.named_children() if name not in NOT_BODY]
            self.pooled_linear = True
        elif isinstance(getattr(net, "features", None), nn.Module) and hasattr(net, "classifier"):
            self.body = ["features"]
            if isinstance(net.classifier, nn.Linear):  # DenseNet: ReLU after the features' last batch norm
                classifier, self.pretrained_ignored = net.classifier, ("classifier.",)
                net.classifier = nn.Sequential()
                self.relu_after_body = True
            else:
                last = len(net.classifier) - 1
                classifier, self.pretrained_ignored = net.classifier[last], (f"classifier.{last}.",)
                net.classifier = net.classifier[:last]
            self.pooled_linear = False
        else:
            raise ValueError(f"{type(net).__name__} has neither an fc classifier nor features + classifier; "
                             "tailshift cannot split it into a feature map and an embedding")
        self.out_dim = classifier.in_features

    def pretrained_target(self) -> nn.Module:
        return self.net

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.grey:
            x = x.expand(-1, 3, -1, -1)
        for name in self.body:
            x = getattr(self.net, name)(x)
        return F.relu(x) if self.relu_after_body else x

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        if self.pooled_linear:
            return feature_map.mean(dim=(2, 3))
        pool = getattr(self.net, "avgpool", None)
        x = pool(feature_map) if pool is not None else F.adaptive_avg_pool2d(feature_map, 1)
        layers = list(self.net.classifier)
        if layers and isinstance(layers[0], nn.Linear):  # VGG, AlexNet, MobileNetV3: flattened first
            x = torch.flatten(x, 1)
        return torch.flatten(self.net.classifier(x), 1)
