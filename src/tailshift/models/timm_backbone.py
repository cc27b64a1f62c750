"""Any timm model with a token sequence (a vision transformer) or a convolutional feature map as a
``Backbone`` (``model.name=timm:vit_base_patch16_224``, the ``tailshift[timm]`` extra).

Weights: ``model.pretrained=hub`` asks timm to fetch the model's own weights (its download, only then);
a path loads a local state dict (timm's layout; its classifier ``head.`` / ``fc.`` left out); null or
``none``: random weights. Nothing is downloaded otherwise.

For a vision transformer the feature map is the last block's patch tokens, after the final norm,
reshaped to the patch grid (B x C x h x w; prefix tokens and prompts left out). With ``model.readout=avg``
the embedding is their mean (timm's ``global_pool='avg'``; the model built with its final norm on the tokens
where it allows, as class-token models are trained): the embedding is then a function of the map alone, as
CAM and CSA's Grad-CAM need (``models/base.py``), and the class token takes part in attention but is not read
out. With ``model.readout=token`` it is the class token after the final norm, as the model was pretrained to
output it (timm's ``global_pool='token'``, ``forward_head(pre_logits=True)``), which the map does not determine;
a model whose timm default pools otherwise (EVA-02's ``'avg'``) is refused.
For a convolutional model the map is ``forward_features`` and the embedding timm's own
``forward_head(pre_logits=True)``; channels-last models (Swin) are refused.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from ..registry import UnknownNameError
from .base import MODELS, Backbone
from .tuning import BlockAnatomy


def import_optional(module: str, extra: str, what: str):
    """``module`` imported, or one line saying which package (or which build of torchvision, which timm
    and open_clip import) to install."""
    try:
        return __import__(module)
    except ImportError as err:
        if err.name not in (module, None) and not str(err.name).startswith(module):
            raise ValueError(f"{what} needs {module}, whose import failed: {err}") from None
        raise ValueError(f"{what} needs {module}: pip install tailshift[{extra}]") from None
    except (RuntimeError, OSError) as err:  # torchvision built for another torch (PyPI's CUDA build beside a CPU one)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{module} does not import beside torch {torch.__version__} ({first_line}); install the "
                         "torchvision build made for this torch (for a CPU torch: pip install torchvision "
                         "--index-url https://download.pytorch.org/whl/cpu)") from None


def hub_failure(what: str, err: Exception, fetch: str) -> ValueError:
    """The one line of a ``model.pretrained=hub`` download that failed: why, and what to fetch where."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return ValueError(f"model.pretrained=hub could not fetch {what} ({reason}); {fetch}")


def timm_builder(arch: str):
    """The factory of ``timm:<arch>`` (the ``timm`` family of MODELS)."""
    timm = import_optional("timm", "timm", "model.name=timm:...")
    if not timm.is_model(arch):
        raise UnknownNameError(f"unknown model 'timm:{arch}'; timm.list_models() lists the allowed names")
    return functools.partial(build_timm, arch)


MODELS.register_family("timm", timm_builder)

#: keyword arguments of timm.create_model that tailshift sets itself (the readout, the image size, the weights)
TIMM_ARGS_RESERVED = ("pretrained", "num_classes", "global_pool", "img_size", "fc_norm", "use_fc_norm",
                      "in_chans", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def check_timm_args(model_name: str, timm_args: dict) -> None:
    """``model.timm_args`` (keyword arguments of timm.create_model) fit ``model.name``: a timm model, no
    argument tailshift sets itself, values plain numbers, strings, true/false or lists of them."""
    if not model_name.startswith("timm:"):
        raise ValueError(f"model.timm_args applies to timm:NAME models; model.name={model_name} is not one "
                         "(leave model.timm_args empty)")
    for key, value in timm_args.items():
        if key in TIMM_ARGS_RESERVED:
            raise ValueError(f"model.timm_args.{key} is set by tailshift (from the data, model.pretrained and its "
                             f"readout); allowed: architecture arguments other than {', '.join(TIMM_ARGS_RESERVED)}")
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (bool, int, float, str)) for v in values):
            raise ValueError(f"model.timm_args.{key} must be a number, string, true/false or a list of them, "
                             f"got {value!r}")


def build_timm(arch: str, in_channels: int = 3, image_size: int | None = None, pretrained: str | None = None,
               timm_args: dict | None = None, readout: str = "avg") -> "TimmBackbone":
    timm = import_optional("timm", "timm", "model.name=timm:...")
    hub = pretrained == "hub"
    if not hub and pretrained is not None and pretrained.startswith("hub:"):
        raise ValueError(f"model.pretrained={pretrained}: timm names its weights in the model name "
                         f"(timm:{arch.split('.')[0]}.TAG, e.g. timm:vit_base_patch16_224.augreg2_in21k_ft_in1k); "
                         "use model.pretrained=hub")

    architecture = dict(timm_args or {})
    check_timm_args(f"timm:{arch}", architecture)

    def create(**kwargs):
        try:
            return timm.create_model(arch, pretrained=hub, num_classes=0, **architecture, **kwargs)
        except TypeError as err:
            unknown = [key for key in architecture if f"'{key}'" in str(err)]
            if not unknown:
                raise
            raise ValueError(f"model.timm_args.{unknown[0]} is not an argument of timm:{arch} "
                             f"({str(err).splitlines()[0]})") from None
        except (OSError, RuntimeError, ValueError) as err:
            if not hub:
                raise
            raise hub_failure(f"timm's {arch} weights", err,
                              f"run timm.create_model('{arch}', pretrained=True) where the Hugging Face hub is "
                              "reachable and copy its cache (~/.cache/huggingface) here, or save the model's "
                              "state_dict() to a file and pass model.pretrained=PATH") from None

    net = create()
    if getattr(net, "output_fmt", "NCHW") != "NCHW":
        raise ValueError(f"model.name=timm:{arch} gives {net.output_fmt} feature maps (channels last); tailshift reads "
                         "timm models whose features are NCHW maps or token sequences (ViT, DeiT, EVA, ResNet, ConvNeXt)")
    grid = getattr(getattr(net, "patch_embed", None), "img_size", None)
    vit = hasattr(net, "blocks") and hasattr(net, "num_prefix_tokens")
    if readout == "token" and not (vit and getattr(net, "cls_token", None) is not None
                                   and getattr(net, "global_pool", None) == "token"):
        has = "has none" if getattr(net, "cls_token", None) is None else f"pools its tokens ({net.global_pool!r})"
        raise ValueError(f"model.readout=token needs a vision transformer that reads out its class token; "
                         f"model.name=timm:{arch} {has} (use model.readout=avg)")
    if vit and readout == "token":  # timm's own class-token readout: the final norm, then the class token
        net = create(global_pool="token", img_size=image_size or grid[0])
    elif vit and net.global_pool == "avg":  # pretrained on the mean of its patches (EVA-02): its own norms and keys
        net = create(img_size=image_size or grid[0])
    elif vit:  # read out the mean of its patches
        size = image_size or grid[0]
        # the final norm on the tokens, as the class-token models were trained (ViT: fc_norm, EVA: use_fc_norm), so
        # their weights load: the pooled models' fc_norm after the mean would leave the trained norm out
        for final_norm in ({"fc_norm": False}, {"use_fc_norm": False}, {}):
            try:
                net = create(global_pool="avg", img_size=size, **final_norm)
                break
            except TypeError:
                if not final_norm:
                    raise
    return TimmBackbone(net, in_channels, readout)


class TimmAnatomy(BlockAnatomy):
    """Where the tuned modules go in timm's ``Block`` (``timm/models/vision_transformer.py``)."""

    scaled = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")

    @staticmethod
    def dim(block: nn.Module) -> int:
        return block.norm1.normalized_shape[0]

    @staticmethod
    def attention_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return block.drop_path1(block.ls1(block.attn(block.norm1(x))))

    @staticmethod
    def mlp_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


class TimmBackbone(Backbone):
    """A timm model split into ``feature_map`` and ``embed``; grey images are repeated to three channels."""

    anatomy = TimmAnatomy
    pretrained_ignored = ("head.", "fc.", "classifier.")

    def __init__(self, net: nn.Module, in_channels: int = 3, readout: str = "avg"):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"timm models take 1 (repeated) or 3 image channels, got {in_channels}")
        self.grey = in_channels == 1
        self.net = net
        self.readout = readout
        self.out_dim = net.num_features
        self.tokens = hasattr(net, "blocks") and hasattr(net, "num_prefix_tokens")
        if self.tokens:
            self.grid = tuple(net.patch_embed.grid_size)
            self.prefix = net.num_prefix_tokens
            self.sequence_length = self.prefix + self.grid[0] * self.grid[1]
            self.patch_area = net.patch_embed.patch_size[0] * net.patch_embed.patch_size[1]
            self.pooled_linear = readout == "avg" and isinstance(net.fc_norm, nn.Identity)

    def pretrained_target(self) -> nn.Module:
        return self.net

    def tunable_blocks(self) -> list[nn.Module] | None:
        """The transformer blocks lightweight tuning changes, in order (None: not blocks of timm's ``Block``
        form, e.g. no vision transformer)."""
        if not self.tokens:
            return None
        needed = (*TimmAnatomy.scaled, "ls1", "ls2", "drop_path1", "drop_path2")
        blocks = list(self.net.blocks)
        return blocks if all(_has(block, path) for block in blocks for path in needed) else None

    def replace_block(self, index: int, block: nn.Module) -> None:
        self.net.blocks[index] = block

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x.expand(-1, 3, -1, -1) if self.grey else x)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        features = self._features(x)
        if not self.tokens:
            return features
        patches = features[:, self.prefix:self.sequence_length]  # prompts (VPT) come after the patches
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        if not self.embeds_feature_map:
            raise self.embed_refused()
        if self.tokens:
            return self.net.fc_norm(feature_map.mean(dim=(2, 3)))
        return self.net.forward_head(feature_map, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embeds_feature_map:
            return super().forward(x)
        return self.net.forward_head(self._features(x), pre_logits=True)  # the class token (first; prompts last)
