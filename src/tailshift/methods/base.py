"""The one plug-in point: every training method is a ``Method``.

The engine knows only this interface. A method declares the streams (samplers)
it draws from, its stages, the loss of one step and its prediction heads; it
owns its heads and any state (e.g. a context bank) but is handed the backbone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..data.pipeline import Batch
from ..data.sampling import SamplerSpec
from ..distributed import BatchShard
from ..registry import Registry

METHODS: Registry = Registry("method")
STREAM_ROLES = ("uniform", "balanced", "power", "reversed")


@dataclass(frozen=True)
class StreamRequest:
    """A stream by role: "uniform" (every sample once per epoch), "balanced"
    (q = 0, in the form the run's ``sampling`` config picks), "power" with q, or
    "reversed" (class probability proportional to 1 / n, BBN's re-balancing branch)."""

    role: str
    q: float = 1.0

    def __post_init__(self):
        if self.role not in STREAM_ROLES:
            raise ValueError(f"unknown stream role {self.role!r}; known: {', '.join(STREAM_ROLES)}")


@dataclass(frozen=True)
class Stage:
    """A training stage.

    ``driver``: the stream whose epoch sets the number of steps per epoch (the others are
    cycled alongside it); it may be left out only when there is one stream. Each step's
    batches are drawn (and augmented) driver first, then the others in declared order.
    ``lr`` and ``schedule`` override the run's learning rate and schedule for this stage;
    ``warmup``: whether the run's linear warm-up (``train.optim.warmup_epochs``) opens it.
    ``retrains_classifier``: what the stage is, for the method's hooks (the engine reads only the
    above): the backbone stays frozen and a classifier is trained on it (decoupled stage 2). The
    ``name`` only labels the stage (in checkpoints and curves).
    """

    name: str
    epochs: int
    streams: dict[str, StreamRequest]
    driver: str | None = None
    lr: float | None = None
    schedule: str | None = None
    warmup: bool = True
    retrains_classifier: bool = False

    def __post_init__(self):
        if self.driver is None:
            if len(self.streams) != 1:
                raise ValueError(f"stage {self.name!r} has streams {', '.join(self.streams)}: name its driver")
            object.__setattr__(self, "driver", next(iter(self.streams)))
        elif self.driver not in self.streams:
            raise ValueError(f"stage {self.name!r}: driver {self.driver!r} is not one of its streams "
                             f"({', '.join(self.streams)})")

    def stream_order(self) -> list[str]:
        """The driver, then the other streams in declared order (the order batches are drawn in)."""
        return [self.driver, *(name for name in self.streams if name != self.driver)]


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
        """Called before every epoch: every loss the method holds follows it (``Loss.begin_epoch``, e.g.
        DRW's re-weighting), so none can be forgotten. A method that does more (e.g. empty a bank)
        calls this first."""
        from .losses import outermost_losses  # lazily: the losses import build_params from here

        for loss in outermost_losses(self):
            loss.begin_epoch(epoch, stage.epochs)

    def train_mode(self, stage: Stage) -> None:
        """Put modules in the right mode for training this stage."""
        self.train()

    def training_step(self, batches: dict[str, Batch], ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the heads read: the backbone's embedding unless a method changes it."""
        return self.backbone(x)

    def heads(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Every reported head by name: a function from ``features(x)`` to logits. The figures
        (e.g. Grad-CAM of a head) and ``predict`` go through this, never through attributes."""
        raise NotImplementedError

    def untrained_heads(self, history: list[dict]) -> set[str]:
        """Heads that no training step gave a loss, judged from the run's curve (its per-epoch step
        logs): their scores are a random head's, so studies count such runs apart. Default: none."""
        return set()

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head; each is evaluated and reported."""
        features = self.features(x)
        return {name: head(features) for name, head in self.heads().items()}

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (besides buffers)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def build_params(owner: type, values: dict, key: str = "method.params"):
    """Validate a ``params`` mapping (of a method, or a loss: ``key`` says where it was given) against
    the owner's ``Params`` dataclass: names, types (from the annotations) and the rules declared next
    to the fields (``validation.bounded``)."""
    from ..config import ConfigError, build_dataclass  # lazily: config imports the registries lazily too

    params_cls = owner.Params
    if not isinstance(values, dict):
        raise ConfigError(f"{key} for {owner.__name__} must be a mapping, got {values!r}")
    names = [f.name for f in dataclasses.fields(params_cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown {key}.{unknown[0]} for {owner.__name__}; known: {', '.join(names) or '(none)'}")
    return build_dataclass(params_cls, values, key)


def resolved_params(method_name: str, values: dict) -> dict:
    """A method's params with every default filled in (what the run really uses), as plain data."""
    return dataclasses.asdict(build_params(METHODS.get(method_name), values))


def stream_spec(request: StreamRequest, balanced: str, per_class: int, balanced_epoch: str) -> SamplerSpec:
    """Turn a method's stream request into a concrete sampler, following the run's sampling config."""
    if request.role == "uniform":
        return SamplerSpec(kind="shuffle")
    if request.role == "balanced":
        if balanced == "class_aware":
            return SamplerSpec(kind="class_aware", per_class=per_class, epoch_length=balanced_epoch)
        return SamplerSpec(kind="power", q=0.0, epoch_length=balanced_epoch)
    if request.role == "reversed":
        return SamplerSpec(kind="reversed")
    return SamplerSpec(kind="power", q=request.q)
