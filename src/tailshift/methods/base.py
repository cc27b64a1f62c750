"""The one plug-in point: every training method is a ``Method``.

The engine knows only this interface. A method declares the streams (samplers)
it draws from, its stages, the loss of one step and its prediction heads; it
owns its heads and any state (e.g. a context bank) but is handed the backbone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data.pipeline import Batch
from ..data.sampling import SamplerSpec
from ..distributed import BatchShard
from ..registry import Registry

METHODS: Registry = Registry("method")
STREAM_ROLES = ("uniform", "balanced", "power")


@dataclass(frozen=True)
class StreamRequest:
    """A stream by role: "uniform" (every sample once per epoch), "balanced"
    (q = 0, in the form the run's ``sampling`` config picks) or "power" with q."""

    role: str
    q: float = 1.0

    def __post_init__(self):
        if self.role not in STREAM_ROLES:
            raise ValueError(f"unknown stream role {self.role!r}; known: {', '.join(STREAM_ROLES)}")


@dataclass(frozen=True)
class Stage:
    """A training stage. The first stream drives the number of steps per epoch;
    the others are cycled alongside it. ``lr`` overrides the run's learning rate."""

    name: str
    epochs: int
    streams: dict[str, StreamRequest]
    lr: float | None = None
    schedule: str | None = None


@dataclass
class StepContext:
    """What a training step may know about where it is."""

    stage: Stage
    stage_index: int
    epoch: int  # 0-based within the stage
    step: int
    generator: torch.Generator  # the method's own random stream (on the device)
    #: this process's rows of the global batch (several processes); None: one process, all of it
    shard: BatchShard | None = None


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set ``Params`` (a dataclass of their options) and override the hooks."""

    @dataclass
    class Params:
        pass

    #: the head whose predictions are the method's headline result
    default_head: ClassVar[str] = "main"

    def __init__(self, backbone: nn.Module, num_classes: int, class_counts: np.ndarray, epochs: int, params: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.register_buffer("class_counts", torch.as_tensor(np.asarray(class_counts), dtype=torch.float32))
        self.epochs = epochs
        self.params = build_params(type(self), params or {})

    # --- what the engine asks -------------------------------------------------
    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def begin_stage(self, stage: Stage, fresh: bool) -> None:
        """Called before a stage's first epoch, and again on resume (``fresh`` False)."""

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def begin_epoch(self, stage: Stage, epoch: int) -> None:
        """Called before every epoch (e.g. to empty a bank)."""

    def train_mode(self, stage: Stage) -> None:
        """Put modules in the right mode for training this stage."""
        self.train()

    def training_step(self, batches: dict[str, Batch], ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (besides buffers)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def build_params(method_cls: type, values: dict):
    """Validate a method's ``params`` mapping against its ``Params`` dataclass: names, types
    (from the annotations) and the rules declared next to the fields (``validation.bounded``)."""
    from ..config import ConfigError, build_dataclass  # lazily: config imports the registries lazily too

    params_cls = method_cls.Params
    names = [f.name for f in dataclasses.fields(params_cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown method.params.{unknown[0]} for {method_cls.__name__}; known: {', '.join(names) or '(none)'}"
        )
    return build_dataclass(params_cls, values, "method.params")


def stream_spec(request: StreamRequest, balanced: str, per_class: int, balanced_epoch: str) -> SamplerSpec:
    """Turn a method's stream request into a concrete sampler, following the run's sampling config."""
    if request.role == "uniform":
        return SamplerSpec(kind="shuffle")
    if request.role == "balanced":
        if balanced == "class_aware":
            return SamplerSpec(kind="class_aware", per_class=per_class, epoch_length=balanced_epoch)
        return SamplerSpec(kind="power", q=0.0, epoch_length=balanced_epoch)
    return SamplerSpec(kind="power", q=request.q)
