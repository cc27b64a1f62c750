"""An open_clip model's image tower as a ``Backbone`` (``model.name=clip:ViT-B-16``, the
``tailshift[clip]`` extra); its text tower stays reachable (``text_features``) for initialising a
classifier from class-name prompts, outside the module tree (it never trains and is not checkpointed).

Weights: ``model.pretrained=hub`` (open_clip's download of the ``openai`` weights, or the first tag
open_clip lists for the model) or ``hub:TAG``; a path loads a local state dict of the whole CLIP model
(``visual.*`` and the text tower); null or ``none``: random weights. Nothing is downloaded otherwise.

As for timm's vision transformers (``timm_backbone.py``), the feature map is the last block's patch
tokens after ``ln_post`` on the patch grid. With ``model.readout=avg`` the embedding is their mean times
``proj`` (open_clip's ``pool_type='avg'``), in the joint image-text space; with ``model.readout=token`` it is
the class token after ``ln_post`` and before ``proj``, as LIFT reads it (shijxcs/LIFT models/peft_vit.py lines
457-459), and the text embeddings are mapped back through ``proj`` to meet it (trainer.py lines 349-351).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import UnknownNameError
from .base import MODELS, Backbone
from .tuning import BlockAnatomy
from .timm_backbone import hub_failure, import_optional


def clip_builder(arch: str):
    """The factory of ``clip:<arch>`` (the ``clip`` family of MODELS)."""
    open_clip = import_optional("open_clip", "clip", "model.name=clip:...")
    if arch not in open_clip.list_models():
        raise UnknownNameError(f"unknown model 'clip:{arch}'; open_clip.list_models() lists the allowed names")
    return functools.partial(build_clip, arch)


MODELS.register_family("clip", clip_builder)


def build_clip(arch: str, in_channels: int = 3, image_size: int | None = None, pretrained: str | None = None,
               readout: str = "avg") -> "ClipBackbone":
    open_clip = import_optional("open_clip", "clip", "model.name=clip:...")
    tag = None
    if pretrained is not None and (pretrained == "hub" or pretrained.startswith("hub:")):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not tags:
            raise ValueError(f"model.pretrained={pretrained}: open_clip has no weights for {arch}")
        tag = pretrained[4:] or ("openai" if "openai" in tags else tags[0])
        if tag not in tags:
            raise ValueError(f"model.pretrained={pretrained}: open_clip has no weights {tag!r} for {arch}; "
                             f"allowed: {', '.join('hub:' + t for t in tags)}")
    try:
        model = open_clip.create_model(arch, pretrained=tag, force_image_size=image_size)
    except (OSError, RuntimeError) as err:
        if tag is None:
            raise
        raise hub_failure(f"open_clip's {arch} weights {tag!r}", err,
                          f"run open_clip.create_model('{arch}', pretrained='{tag}') where it is reachable and copy "
                          "its cache (~/.cache/huggingface or ~/.cache/clip) here, or save the model's "
                          "state_dict() to a file and pass model.pretrained=PATH") from None
    return ClipBackbone(model, arch, in_channels, readout)


class SplitAttention(nn.Module):
    """open_clip's self-attention (``nn.MultiheadAttention``, batch first) with its q, k, v projection as a
    Linear ``qkv`` and its output projection as ``proj`` (the same parameters, the same computation), so
    LoRA and SSF can wrap them as they do timm's. Called as the block calls its ``attn``."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        dim = attention.embed_dim
        self.heads = attention.num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qkv.weight, self.qkv.bias = attention.in_proj_weight, attention.in_proj_bias
        self.proj = attention.out_proj

    def forward(self, q_x, k_x, v_x, need_weights=False, attn_mask=None):  # noqa: ARG002 (self-attention: q_x)
        b, n, c = q_x.shape
        q, k, v = self.qkv(q_x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, c)), None


class ClipAnatomy(BlockAnatomy):
    """Where the tuned modules go in open_clip's ``ResidualAttentionBlock`` (``open_clip/transformer.py``)."""

    scaled = ("ln_1", "attn.qkv", "attn.proj", "ln_2", "mlp.c_fc", "mlp.c_proj")

    @staticmethod
    def prepare(block: nn.Module, mode: str) -> None:
        if mode in ("lora", "ssf"):
            block.attn = SplitAttention(block.attn)

    @staticmethod
    def dim(block: nn.Module) -> int:
        return block.ln_1.normalized_shape[0]

    @staticmethod
    def attention_branch(block: nn.Module, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        return block.ls_1(block.attention(block.ln_1(x), attn_mask=attn_mask))

    @staticmethod
    def mlp_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return block.ls_2(block.mlp(block.ln_2(x)))


class ClipBackbone(Backbone):
    """open_clip's ``VisionTransformer`` split into ``feature_map`` and ``embed``."""

    anatomy = ClipAnatomy

    def __init__(self, model: nn.Module, arch: str, in_channels: int = 3, readout: str = "avg"):
        super().__init__()
        visual = model.visual
        if in_channels not in (1, 3):
            raise ValueError(f"CLIP models take 1 (repeated) or 3 image channels, got {in_channels}")
        if not hasattr(visual, "transformer") or not visual.transformer.batch_first or visual.attn_pool is not None:
            raise ValueError(f"model.name=clip:{arch}: only open_clip's plain vision transformers are supported "
                             f"(its image tower is a {type(visual).__name__})")
        self.grey = in_channels == 1
        self.visual = visual
        self._clip = (model, arch)  # a tuple: the text tower is no submodule (never trained, not checkpointed)
        self.grid = tuple(visual.grid_size)
        self.sequence_length = 1 + self.grid[0] * self.grid[1]
        self.patch_area = visual.patch_size[0] * visual.patch_size[1]
        self.readout = readout
        projected = visual.proj is not None and readout == "avg"  # token: before proj, as LIFT
        self.out_dim = visual.proj.shape[1] if projected else visual.ln_post.normalized_shape[0]

    def pretrained_target(self) -> nn.Module:
        return self._clip[0]

    def tunable_blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def replace_block(self, index: int, block: nn.Module) -> None:
        self.visual.transformer.resblocks[index] = block

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's tokens after ``ln_post``: the class token, the patches, then any prompts (VPT)."""
        if self.grey:
            x = x.expand(-1, 3, -1, -1)
        return self.visual.ln_post(self.visual.transformer(self.visual._embeds(x)))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        patches = self._tokens(x)[:, 1:self.sequence_length]
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        if not self.embeds_feature_map:
            raise self.embed_refused()
        pooled = feature_map.mean(dim=(2, 3))
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embeds_feature_map:
            return super().forward(x)
        return self._tokens(x)[:, 0]

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """The text tower's embeddings of ``texts`` in the image embedding's space (N x out_dim, not normalised),
        on the image tower's device: e.g. "a photo of a {}." per class name, for a cosine head's initial rows.
        Under the class-token readout (before ``proj``) they are mapped back through ``proj``: text @ proj.T
        (shijxcs/LIFT trainer.py lines 349-351)."""
        import open_clip

        model, arch = self._clip
        device = self.visual.proj.device if self.visual.proj is not None else self.visual.conv1.weight.device
        model.to(device)
        text = model.encode_text(open_clip.get_tokenizer(arch)(texts).to(device))
        if self.visual.proj is not None and self.readout == "token":
            return text @ self.visual.proj.t()
        return text
