"""The one plug-in point: every training method is a ``Method``.

The engine knows only this interface. A method declares the streams (samplers, by
``data.sampling.StreamRequest``) it draws from, its stages, the loss of one step and its
prediction heads; it owns its heads and any state (e.g. a context bank) but is handed the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
from torch import nn

from ..data.pipeline import Batch, DeviceArrays
from ..data.sampling import STREAM_ROLES, StreamRequest  # noqa: F401  (where method code finds them)
from ..distributed import BatchShard
from ..registry import Registry
from ..validation import build_params
from .losses import outermost_losses

METHODS: Registry = Registry("method")


@dataclass(frozen=True)
class Stage:
    """A training stage.

    ``driver``: the stream whose epoch sets the number of steps per epoch (the others are
    cycled alongside it); it may be left out only when there is one stream. Each step's
    batches are drawn (and augmented) driver first, then the others in declared order.
    ``lr`` and ``schedule`` override the run's learning rate and schedule for this stage;
    ``warmup``: whether the run's linear warm-up (``train.optim.warmup_epochs``) opens it.
    ``milestones`` and ``gamma`` override the run's ``train.optim.milestones`` / ``gamma`` (a step
    schedule's epochs, counted within the stage).
    ``makes_data``: a stage that trains nothing (no epochs, no streams): the engine calls the
    method's ``make_data`` once, stores the images in the run folder and every later stage's
    streams draw from the run's split and them (an epoch keeps the run's split's length).
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
    milestones: tuple[int, ...] | None = None
    gamma: float | None = None
    makes_data: bool = False
    retrains_classifier: bool = False

    def __post_init__(self):
        if self.makes_data:
            if self.streams or self.epochs:
                raise ValueError(f"stage {self.name!r} makes data: it has no streams and no epochs")
            return
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


@dataclass(frozen=True)
class TrainingImages:
    """The run's training split as a method may show it (``Method.illustration``): held on the
    device and gathered by index, with the run's settings a faithful picture needs."""

    arrays: DeviceArrays  # ``arrays.batch(index)``: the images as training sees them
    labels: np.ndarray
    batch_size: int  # train.batch_size
    per_class: int  # sampling.per_class: how many images of a class a class-aware batch takes in a row
    mean: tuple[float, ...] | None  # data.mean / data.std: the normalisation to undo for showing
    std: tuple[float, ...] | None


@dataclass(frozen=True)
class MadeData:
    """What a ``makes_data`` stage adds to the training split: ``labels`` (int64, known before any image
    is made) and ``chunks``, the uint8 images (B x C x H x W tensors) in label order, made while they
    are written, so no more than one chunk is held at a time."""

    labels: np.ndarray
    chunks: Iterable[torch.Tensor]


class Method(nn.Module):
    """Base class. Subclasses set ``Params`` (a dataclass of their options) and override the hooks."""

    @dataclass
    class Params:
        pass

    #: the head whose predictions are the method's headline result
    default_head: ClassVar[str] = "main"
    #: whether a training step can leave a trainable parameter without a gradient (CSA's balanced head
    #: before its bank fills): on several processes DDP then looks for such parameters at every step
    #: (``find_unused_parameters``, a walk of the autograd graph); a method that skips parameters without
    #: saying so fails there, at its next step, with DDP's error naming them
    may_skip_parameters: ClassVar[bool] = False
    #: what the method reads the backbone's feature map for (through ``feature_map`` and ``embed``, e.g.
    #: "Grad-CAM"), or "" when it reads only ``backbone(x)``: a backbone whose embedding the map does not
    #: determine (``Backbone.embeds_feature_map`` False: ``model.readout=token``) is refused for it
    reads_feature_map: ClassVar[str] = ""
    #: the stage a finished run can be forked at (``tailshift fork``: the run's later stages trained again under
    #: other ``fork_params``, from the state that stage started from), or None: no such stage
    fork_stage: ClassVar[int | None] = None
    #: the method params that no stage before ``fork_stage`` reads, the only ones a fork may change
    fork_params: ClassVar[tuple[str, ...]] = ()
    #: methods of one family train their stages before ``fork_stage`` alike from equal params, so a run of one forks
    #: into another (a cRT run's representation under LWS); None: a run forks only into its own method
    fork_family: ClassVar[str | None] = None
    #: the state-dict prefixes that the fork stage sets up itself when it starts (``begin_stage``): a fork leaves
    #: them as the new method is built and takes every other entry from the source
    fork_fresh_state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone: nn.Module, num_classes: int, class_counts: np.ndarray, epochs: int,
                 params: Any = None):
        """``params``: this class's ``Params`` as resolved (``resolve.resolve_run``), or a mapping
        of them as a config gives them (checked and completed here), or None for the defaults."""
        super().__init__()
        if self.reads_feature_map and not getattr(backbone, "embeds_feature_map", True):
            raise ValueError(f"model.readout={backbone.readout}: {type(self).__name__} reads the patch grid "
                             f"({self.reads_feature_map}); use model.readout=avg")
        self.backbone = backbone
        self.num_classes = num_classes
        self.register_buffer("class_counts", torch.as_tensor(np.asarray(class_counts), dtype=torch.float32))
        self.epochs = epochs
        self.params = params if isinstance(params, self.Params) else build_params(type(self), params or {})
        # the normalisation the engine's images arrive in (set_input_normalisation); None: pixels in [0, 1]
        self.register_buffer("input_mean", None, persistent=False)
        self.register_buffer("input_std", None, persistent=False)

    def set_input_normalisation(self, mean, std) -> None:
        """The run's ``data.mean`` / ``data.std`` (None: images in [0, 1]), which the engine sets once the method
        is built, for a method that works on pixels (M2m's translation clamps to [0, 1]). Not checkpointed:
        it follows from the config."""
        if mean is not None:
            self.input_mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.input_std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def take_independent_backbone(self, build: Callable[[], nn.Module]) -> None:
        """``build`` makes a further backbone as the run's own was made, its random draws after every other
        draw of the method's construction, for a network that its original trains as another run (M2m's judge
        g). The engine offers it once the method is built; a method that needs none ignores it."""

    @classmethod
    def fork_blocker(cls, params: Any) -> str | None:
        """Why a run with ``params`` (resolved) changed, in its stages from ``fork_stage`` on, the state that stage
        started from (then only a checkpoint taken as that stage begins can be forked); None: they left it."""
        return None

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

    def reads_stored_images(self) -> bool:
        """Whether a step reads the batch's stored uint8 images (``Batch.raw``, e.g. BCL's strong views), which
        only device storage keeps with a batch: the engine refuses host storage before training starts."""
        return False

    def untrained_hint(self, history: list[dict]) -> str:
        """What to change when ``untrained_heads`` is not empty: ``train``'s last line says it. Default: none."""
        return ""

    @torch.no_grad()
    def initialise_heads(self, rows: torch.Tensor) -> None:
        """Start every head that classifies ``features(x)`` from ``rows`` (C x D class vectors, ``model.init_head``):
        each module among ``heads()`` whose ``weight`` is C x D takes them (a bias is zeroed, as LIFT's linear
        head starts: shijxcs/LIFT models/classifiers.py line 27). A method whose heads read something else overrides
        this."""
        heads = [h for h in dict.fromkeys(self.heads().values()) if isinstance(getattr(h, "weight", None), torch.Tensor)
                 and h.weight.shape == rows.shape]
        if not heads:
            raise ValueError(f"model.init_head: method {type(self).__name__} has no head of {rows.shape[0]} classes on "
                             f"{rows.shape[1]} features to start from the class vectors")
        for head in heads:
            head.weight.copy_(rows.to(head.weight))
            if getattr(head, "bias", None) is not None:
                head.bias.zero_()

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head; each is evaluated and reported."""
        features = self.features(x)
        return {name: head(features) for name, head in self.heads().items()}

    def illustration(self, images: TrainingImages) -> list[tuple[str, np.ndarray]] | None:
        """What the method does to training images, shown with the current model at each evaluation
        (TensorBoard): rows of (label, uint8 N x C x H x W), or None when there is nothing to show
        (the default) or nothing yet. It must draw nothing from the run's random streams."""
        return None

    def make_data(self, stage: Stage, images: TrainingImages, generator: torch.Generator) -> MadeData:
        """The images a ``makes_data`` stage adds, made from the training split with the current model;
        randomness from ``generator`` only (seeded per run and stage), so a re-made set is the same."""
        raise NotImplementedError(f"{type(self).__name__} declares stage {stage.name!r} but makes no data")

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (besides buffers)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
