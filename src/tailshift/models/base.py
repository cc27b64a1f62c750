"""The backbone contract (a feature map for CAM, an embedding for the heads) and the registry of
backbones by name, which each definition joins with ``@MODELS.register(name)``."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry

MODELS: Registry = Registry("model")

#: model.readout: how a vision transformer's embedding is read out of its last block: avg (the mean of the patch
#: tokens, a function of the feature map) or token (its class token as the model was pretrained to output it,
#: which the patch grid does not determine)
READOUTS = ("avg", "token")
#: the readouts whose embedding is a function of the feature map: ``embed(feature_map(x)) == forward(x)``
MAP_READOUTS = ("avg",)


class Backbone(nn.Module):
    """A feature extractor without classifier.

    Methods own their heads (``nn.Linear(out_dim, K)``); CAM and CSA need only
    ``feature_map`` (the last convolutional stage, B x C x H x W) and ``embed``
    (everything from that map to the classifier input, B x out_dim), so no
    forward hooks are ever registered.
    """

    out_dim: int
    #: True when ``embed`` is global average pooling (+ flatten) only, so the
    #: classic CAM of Zhou et al. (head weights x feature map) is defined.
    pooled_linear: bool = False
    #: True when the backbone is useless without ``model.pretrained`` (a frozen body)
    needs_pretrained: bool = False

    #: key prefixes of a weights file that the backbone does not hold (a classifier it leaves to the heads)
    pretrained_ignored: tuple[str, ...] = ()
    #: ``model.readout`` (``READOUTS``): every backbone reads out avg; a vision transformer may read its class token
    readout: str = "avg"

    @property
    def embeds_feature_map(self) -> bool:
        """Whether ``forward(x) == embed(feature_map(x))``, so what reads the feature map (Grad-CAM, CSA, a
        second last block) sees what the heads see."""
        return self.readout in MAP_READOUTS

    def embed_refused(self) -> ValueError:
        """The error of ``embed`` on a backbone whose embedding the feature map does not determine."""
        return ValueError(f"model.readout={self.readout}: the embedding is the class token, not a function of the "
                          "feature map; read it with backbone(x) (what reads the patch grid needs model.readout=avg)")

    def pretrained_target(self) -> nn.Module:
        """The module that ``model.pretrained`` weights load into."""
        return self

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.feature_map(x))

    #: how classifier heads on this backbone are initialised: "kaiming" (Kaiming-normal
    #: weight, as the reference LeNet-2d and CIFAR ResNets do for every linear layer) or
    #: "default" (PyTorch's nn.Linear init)
    head_init: str = "default"

    def new_head(self, num_classes: int, in_features: int | None = None) -> nn.Linear:
        """A classifier head for this backbone (on ``in_features`` inputs, default ``out_dim``),
        initialised the way the backbone's family expects."""
        head = nn.Linear(in_features or self.out_dim, num_classes)
        if self.head_init == "kaiming":
            nn.init.kaiming_normal_(head.weight)
        return head

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the last block: ``feature_map(x) == last_block()(trunk(x))``.
        Bilateral-branch methods (BBN) run a second, own last block on it."""
        raise ValueError(f"{type(self).__name__} has no separable last block (BBN needs one: use a CIFAR ResNet)")

    def last_block(self) -> nn.Module:
        raise ValueError(f"{type(self).__name__} has no separable last block (BBN needs one: use a CIFAR ResNet)")

    def new_last_block(self) -> nn.Module:
        """A freshly initialised block of the same shape as ``last_block()``."""
        raise ValueError(f"{type(self).__name__} has no separable last block (BBN needs one: use a CIFAR ResNet)")

    @property
    def mode_dependent(self) -> bool:
        """Whether train/eval mode changes the output (batch norm, dropout)."""
        return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in self.modules())


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal weights for every conv and linear layer (biases keep PyTorch's default)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
