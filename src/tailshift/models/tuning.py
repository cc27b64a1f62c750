"""Lightweight fine-tuning (``model.tune``): which parameters of a backbone train, and the small modules
some modes add. The method's heads always train; ``full`` changes nothing.

Each mode follows the code of LIFT (Shi et al., ICML 2024; github.com/shijxcs/LIFT, ``models/peft_modules.py``
for the modules and ``models/peft_vit.py`` for where they sit, cited per class below), which collects them for
vision transformers:

- ``linear``: the whole backbone frozen (batch norm statistics too), only the heads train.
- ``bitfit``: every bias of the backbone (Ben Zaken et al., ACL 2022, "all bias terms"; LIFT's ``bias_tuning``
  takes the blocks' biases).
- ``vpt_shallow`` / ``vpt_deep``: ``model.vpt_length`` learned prompt tokens appended before the first block
  (shallow) or replacing the previous block's at every block (deep) (Jia et al., ECCV 2022).
- ``lora``: low-rank updates of the query and value projections, rank ``model.tune_dim``, scaled by 1 / rank
  (Hu et al., ICLR 2022, W_q and W_v). Written here rather than taken from peft: peft adapts whole modules,
  and timm's attention holds q, k and v in one ``qkv`` Linear, so peft would adapt the keys too.
- ``adapter``: a bottleneck after each block's MLP, added to its output (Houlsby et al., ICML 2019, as LIFT).
- ``adaptformer``: a scaled bottleneck parallel to each block's MLP, reading the block's residual stream
  (Chen et al., NeurIPS 2022; LIFT's default).
- ``ssf``: a learned per-channel scale and shift after every norm, attention projection and MLP layer
  (Lian et al., NeurIPS 2022; LIFT's ``ssf_attn`` + ``ssf_mlp`` + ``ssf_ln``).

The bottleneck width and LoRA rank ``model.tune_dim`` default to LIFT's rule
(``peft_vit.py`` line 95): ``2 ** max(0, int(log2(num_classes / (2 * blocks))))``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from .base import Backbone

TUNE_MODES = ("full", "linear", "bitfit", "vpt_shallow", "vpt_deep", "lora", "adapter", "adaptformer", "ssf")
#: modes that add modules inside a vision transformer's blocks (the others apply to any backbone)
BLOCK_MODES = ("vpt_shallow", "vpt_deep", "lora", "adapter", "adaptformer", "ssf")


def lift_width(num_classes: int, blocks: int) -> int:
    """LIFT's default bottleneck width (``peft_vit.py`` line 95)."""
    return 2 ** max(0, int(math.log2(num_classes / (blocks * 2))))


def _bottleneck(dim: int, width: int) -> tuple[nn.LayerNorm, nn.Linear, nn.Linear]:
    """LIFT's bottleneck (``peft_modules.py``, Adapter and AdaptFormer): LayerNorm, down (Kaiming-normal,
    a = sqrt(5)), ReLU, up (zero, so the tuned model starts as the pretrained one)."""
    down, up = nn.Linear(dim, width), nn.Linear(width, dim)
    nn.init.kaiming_normal_(down.weight, a=math.sqrt(5))
    nn.init.zeros_(down.bias)
    nn.init.zeros_(up.weight)
    nn.init.zeros_(up.bias)
    return nn.LayerNorm(dim), down, up


class TuningModule(nn.Module):
    """A module a ``model.tune`` mode adds; ``bypassed`` (``tuner_bypassed``) leaves the pretrained model's
    computation as it was without the module."""

    bypassed = False


@contextmanager
def tuner_bypassed(module: nn.Module):
    """Within the block, ``module`` computes as its pretrained model alone: every ``TuningModule`` in it passes
    its input on (LIFT's ``use_tuner=False``, with which it computes class means: shijxcs/LIFT@661ead9
    trainer.py lines 355-390)."""
    tuners = [m for m in module.modules() if isinstance(m, TuningModule)]
    for m in tuners:
        m.bypassed = True
    try:
        yield
    finally:
        for m in tuners:
            m.bypassed = False


class Adapter(TuningModule):
    """LIFT's ``Adapter`` (``peft_modules.py``): up(ReLU(down(LN(x)))); bypassed, zero."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.ln, self.down_proj, self.up_proj = _bottleneck(dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypassed:
            return torch.zeros_like(x)
        return self.up_proj(torch.relu(self.down_proj(self.ln(x))))


class AdaptFormer(Adapter):
    """LIFT's ``AdaptFormer`` (``peft_modules.py``): the adapter times a learned scalar, initialised to 1."""

    def __init__(self, dim: int, width: int):
        super().__init__(dim, width)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class SSF(TuningModule):
    """LIFT's ``SSF`` (``peft_modules.py``): x * scale + shift on the last dimension, scale ~ N(1, 0.02),
    shift ~ N(0, 0.02)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(dim).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.bypassed else x * self.scale + self.shift


class Scaled(nn.Module):
    """A layer followed by its SSF (LIFT applies SSF to the output of each tuned layer)."""

    def __init__(self, layer: nn.Module, dim: int):
        super().__init__()
        self.layer, self.ssf = layer, SSF(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ssf(self.layer(x))


class LoRAQKV(TuningModule):
    """A fused qkv Linear plus LIFT's ``LoRA`` on q and v (``peft_vit.py``: ``q + lora["q"](x)``,
    ``v + lora["v"](x)``): x A B / rank, A Kaiming-uniform (a = sqrt(5)), B zero."""

    def __init__(self, qkv: nn.Linear, rank: int):
        super().__init__()
        dim = qkv.in_features
        self.qkv, self.rank = qkv, rank
        self.lora_a = nn.Parameter(torch.empty(2, dim, rank))
        self.lora_b = nn.Parameter(torch.zeros(2, rank, dim))
        for a in self.lora_a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """The update of the qkv weight (3C x C): zero for k."""
        q, v = (self.lora_a[i] @ self.lora_b[i] / self.rank for i in range(2))
        return torch.cat([q.t(), torch.zeros_like(q), v.t()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypassed:
            return self.qkv(x)
        q, v = ((x @ self.lora_a[i]) @ self.lora_b[i] / self.rank for i in range(2))
        return self.qkv(x) + torch.cat([q, torch.zeros_like(q), v], dim=-1)


class Prompts(TuningModule):
    """LIFT's ``VPT`` (``peft_modules.py``): drop the previous block's prompts (the first ``seq_len`` tokens
    kept) and append ``length`` learned ones, uniform in +-sqrt(6 / (3 * patch area + dim))."""

    def __init__(self, length: int, seq_len: int, patch_area: int, dim: int):
        super().__init__()
        self.seq_len = seq_len
        bound = math.sqrt(6.0 / (3 * patch_area + dim))
        self.prompt = nn.Parameter(torch.empty(length, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypassed:
            return x
        return torch.cat([x[:, :self.seq_len], self.prompt.expand(x.shape[0], -1, -1)], dim=1)


class TunedBlock(nn.Module):
    """A transformer block with prompts before it and / or an AdaptFormer beside its MLP:
    x += attention branch; x += MLP branch + adaptformer(x) (``peft_vit.py``: ``x + adaptformer(identity)``,
    identity being the MLP branch's input). ``anatomy`` names the block's two branches."""

    def __init__(self, block: nn.Module, anatomy, prompts: Prompts | None, parallel: AdaptFormer | None):
        super().__init__()
        self.block, self.prompts, self.parallel = block, prompts, parallel
        self.anatomy = anatomy

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.prompts is not None:
            x = self.prompts(x)
        if self.parallel is None:
            return self.block(x, **kwargs)
        x = x + self.anatomy.attention_branch(self.block, x, **kwargs)
        return x + self.anatomy.mlp_branch(self.block, x) + self.parallel(x)


class BlockAnatomy:
    """Where the tuned modules go in a family's transformer block: ``qkv`` (the fused q, k, v Linear),
    ``mlp``, ``scaled`` (the layers SSF follows), and the block's two residual branches."""

    qkv = "attn.qkv"
    mlp = "mlp"
    scaled: tuple[str, ...] = ()

    @staticmethod
    def prepare(block: nn.Module, mode: str) -> None:
        """Make ``block``'s layers wrappable for ``mode`` (the same computation)."""

    @staticmethod
    def out_features(layer: nn.Module) -> int:
        return layer.out_features if isinstance(layer, nn.Linear) else layer.normalized_shape[0]


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, value)


class TunedBackbone(Backbone):
    """A backbone of which only the ``model.tune`` mode's parameters train. ``requires_grad_`` (a method
    unfreezing "the backbone") reaches only those, and batch norm layers with no trainable parameter stay
    in eval mode, so a frozen part is frozen whole."""

    def __init__(self, inner: Backbone, mode: str, width: int | None, vpt_length: int, num_classes: int,
                 name: str):
        super().__init__()
        self.inner = inner
        self.out_dim, self.pooled_linear, self.head_init = inner.out_dim, inner.pooled_linear, inner.head_init
        self.readout = inner.readout
        if mode in BLOCK_MODES:
            if not hasattr(inner, "tunable_blocks") or inner.tunable_blocks() is None:
                raise ValueError(f"model.tune={mode} needs vision transformer blocks of timm's or open_clip's form; "
                                 f"model.name={name} has none (for it: full, linear or bitfit)")
        for key, p in inner.named_parameters():  # then the modules added below train
            p.requires_grad_(mode == "bitfit" and key.endswith("bias"))
        if mode in BLOCK_MODES:
            count = len(inner.tunable_blocks())
            width = width or lift_width(num_classes, count)
            for i, block in enumerate(inner.tunable_blocks()):
                self._tune_block(inner, i, block, mode, width, vpt_length)
        self.trainable = {key for key, p in self.named_parameters() if p.requires_grad}  # names: stable under .to()

    def _tune_block(self, inner, i, block, mode, width, vpt_length) -> None:
        anatomy = inner.anatomy
        anatomy.prepare(block, mode)
        dim = anatomy.dim(block)
        if mode == "lora":
            _set(block, anatomy.qkv, LoRAQKV(block.get_submodule(anatomy.qkv), width))
        elif mode == "adapter":
            mlp = block.get_submodule(anatomy.mlp)
            _set(block, anatomy.mlp, nn.Sequential(mlp, Residual(Adapter(dim, width))))
        elif mode == "ssf":
            for path in anatomy.scaled:
                layer = block.get_submodule(path)
                _set(block, path, Scaled(layer, anatomy.out_features(layer)))
        prompts = parallel = None
        if mode == "vpt_deep" or (mode == "vpt_shallow" and i == 0):
            prompts = Prompts(vpt_length, inner.sequence_length, inner.patch_area, dim)
        if mode == "adaptformer":
            parallel = AdaptFormer(dim, width)
        if prompts is not None or parallel is not None:
            inner.replace_block(i, TunedBlock(block, anatomy, prompts, parallel))

    def requires_grad_(self, requires_grad: bool = True) -> "TunedBackbone":
        for key, p in self.named_parameters():
            if key in self.trainable:
                p.requires_grad_(requires_grad)
        return self

    def train(self, mode: bool = True) -> "TunedBackbone":
        super().train(mode)
        for m in self.inner.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    def pretrained_target(self) -> nn.Module:
        return self.inner.pretrained_target()

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.feature_map(x)

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(feature_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embeds_feature_map:
            return super().forward(x)  # through this module's feature_map, which train.compile may replace
        return self.inner(x)


class Residual(nn.Module):
    """y + f(y): LIFT's ``x = x + adapter(x)`` on the MLP's output."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every ``LoRAQKV`` into its qkv weight (in place), leaving plain Linear layers: the exported
    model computes the same logits without the low-rank branch."""
    for name, child in list(module.named_modules()):
        if isinstance(child, LoRAQKV):
            with torch.no_grad():
                child.qkv.weight += child.delta().to(child.qkv.weight.dtype)
            _set(module, name, child.qkv)
    return module
