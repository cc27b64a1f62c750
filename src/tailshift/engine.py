"""The training loop: stages, streams, optimisation, evaluation, checkpoints.

The engine knows only the ``Method`` interface; it never branches on a method's
name. All randomness is derived from (seed, stage, epoch), so a run killed at
any point resumes from its last epoch checkpoint and replays exactly.

Under torchrun every process draws the same index streams and trains on its rows of
each global batch; the method's step runs as the forward of one module that torch's
``DistributedDataParallel`` wraps (``TrainingStep``), which averages the gradients during the
backward pass; evaluation is sharded and gathered, and rank 0 alone writes the run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import os
import platform
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import RunConfig, save_config
from .data.arrays import ArrayDataset
from .data.build import PreparedData, prepare_data
from .data.pipeline import DeviceArrays, batch_plan, epoch_length
from .data.sampling import Sampler, stream_spec
from .data.host_loader import make_feeds, plain_feed
from .distributed import BatchShard, World, current_world, launched, sync_batchnorm
from .io import RunLock, atomic_open, atomic_write_json, check_folder_free
from .methods import Method
from .methods.base import MadeData, Stage, StepContext, TrainingImages
from .methods.head_init import chosen_init, class_mean_rows, text_feature_rows
from .metrics import summarize
from .models import build_backbone
from .optim import build_optimizer
from .progress import Progress
from .resolve import ResolvedRun, resolve_run
from .schedules import SCHEDULES
from .speed import configure_backends, resolve_speed
from .tensorboard_log import TensorBoardLog
from .validation import ConfigError


#: draw ids reserved per epoch for a secondary stream's passes (a stream cycled beside the first)
SECONDARY_PASSES_PER_EPOCH = 100_003
#: the run-folder subfolder where ``makes_data`` stages store their images and labels
MADE_FOLDER = "made"


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by another configuration."""


class DamagedCheckpointError(CheckpointMismatchError):
    """A checkpoint's bytes are not those written (a CRC fails, or it is not a whole checkpoint)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says from which epoch the same command resumes."""


def verify_checkpoint(path: Path, remedy: str) -> None:
    """``torch.load`` does not check the CRC32 that a checkpoint (a zip) stores for each entry: read every
    entry and compare, so a damaged file is never trained from or evaluated. ``remedy``: what to do."""
    try:
        with zipfile.ZipFile(path) as archive:
            failed = archive.testzip()
        reason = None if failed is None else f"entry {failed} fails its CRC check"
    except Exception as err:  # not a zip, truncated, or a header overwritten
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"[:200]
    if reason is not None:
        raise DamagedCheckpointError(f"cannot read checkpoint {path} (damaged: {reason}); {remedy}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def derive_seed(*parts) -> int:
    """A 63-bit seed from the run seed and labels such as ("augment", stage, epoch)."""
    return int(np.random.SeedSequence([zlib.crc32(str(p).encode()) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def learning_rate(optim_cfg, base_lr: float, schedule: str, epochs: int, progress: float, period: int | None = None,
                  warmup: bool = True) -> float:
    """LR at ``progress`` epochs into a stage (fractional, so schedules are smooth per step);
    ``warmup``: whether the run's linear warm-up (``optim_cfg.warmup_epochs``) opens the stage.

    ``cosine_epoch`` is the authors' release: the rate is set once per epoch, epoch e
    (0-based) training at base * (1 + cos(pi * e / period)) / 2; the engine passes the
    run's epoch count as the period for every stage (so cRT's 4-epoch re-training of an 8-epoch run
    trains at 0.1, 0.0962, 0.0854, 0.0691).
    """
    warmup = optim_cfg.warmup_epochs if warmup else 0
    if warmup and progress < warmup:
        return base_lr * (progress + 1e-8) / warmup
    return SCHEDULES.get(schedule)(base_lr, progress, epochs, warmup, period, optim_cfg)


def versions() -> dict:
    return {
        "tailshift": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _load_failure(err: Exception) -> str:
    """torch's reason for refusing a file, without its advice to load it unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    reason = [line for line in lines if not line.startswith(advice)] or lines or [type(err).__name__]
    return reason[0][:200]


@dataclass
class RunState:
    stage_index: int = 0
    epoch: int = 0  # next epoch to run within the stage
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time over the same epochs: comparable on a shared machine
    made: dict = field(default_factory=dict)  # makes_data stage name -> {"count", "sha256"} of what it stored


def build_method(run: ResolvedRun, data: PreparedData) -> Method:
    """The run's method on a new backbone for ``data``'s images, with the run's resolved params."""
    cfg = run.config
    channels, height, _ = data.image_shape
    backbone = build_backbone(cfg.model, in_channels=channels, image_size=height, num_classes=data.num_classes)
    method = run.method_class(backbone, data.num_classes, data.class_counts, cfg.train.epochs, run.params)
    method.take_independent_backbone(lambda: build_backbone(cfg.model, in_channels=channels, image_size=height,
                                                            num_classes=data.num_classes))
    method.set_input_normalisation(cfg.data.mean, cfg.data.std)
    return method


@torch.no_grad()
def check_model_takes_images(cfg: RunConfig, method: Method, arrays, image_shape: tuple[int, int, int]) -> None:
    """One image through every head before any step, so a model that cannot take these
    images fails now, in one line, rather than after the run folder has been written."""
    method.eval()
    try:
        method.predict(next(arrays.iterate(1)).x)
    except RuntimeError as err:
        shape = "x".join(map(str, image_shape))
        raise ConfigError(f"model.name={cfg.model.name} cannot take the dataset's {shape} (CxHxW) images: "
                          f"{str(err).splitlines()[0]}") from None
    finally:
        method.train()


def mean_over_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Each image's logits averaged over its ``views`` consecutive rows (test-time ensembling, as LIFT averages
    its crops' logits: shijxcs/LIFT trainer.py lines 571-573); one view: the logits as they are."""
    return logits if views == 1 else logits.unflatten(0, (-1, views)).mean(1)


def initial_head_rows(cfg: RunConfig, method: Method, data: PreparedData, device: torch.device,
                      memory_format: torch.memory_format, world: World = World()) -> torch.Tensor:
    """The class vectors ``model.init_head`` starts the heads from (``methods/head_init.py``)."""
    if chosen_init(cfg.model.init_head, method.backbone) == "text_feat":
        return text_feature_rows(method.backbone, data.train.class_names, cfg.model.init_prompt, cfg.model.name)
    feed = plain_feed(data.train, device, cfg.data, memory_format)
    return class_mean_rows(method, feed, data.num_classes, cfg.train.test_batch_size, world)


@torch.inference_mode()
def predicted_classes(method: Method, arrays, batch_size: int, world: World = World()) -> tuple[dict, np.ndarray]:
    """Each head's predicted class of every test sample, and the labels; each process predicts its
    contiguous share, gathered in order."""
    method.eval()
    preds: dict[str, list] = {}
    labels = []
    for batch in arrays.iterate(batch_size, *world.part(len(arrays))):
        labels.append(batch.y)
        for head, logits in method.predict(batch.x).items():
            preds.setdefault(head, []).append(mean_over_views(logits, batch.views).argmax(1))
    labels = world.gather(torch.cat(labels)).cpu().numpy()
    return {head: world.gather(torch.cat(p)).cpu().numpy() for head, p in preds.items()}, labels


def evaluate(method: Method, arrays, batch_size: int, num_classes: int, groups, world: World = World()) -> dict:
    """Per-head summaries on a test feed."""
    preds, labels = predicted_classes(method, arrays, batch_size, world)
    return {head: summarize(p, labels, num_classes, groups) for head, p in preds.items()}


class TrainingStep(nn.Module):
    """A method's training step as one module's forward, so that ``DistributedDataParallel`` wraps
    all of it: whatever the step runs (CSA's two branches and its Grad-CAM, BBN's two, a method's
    several losses) is one forward, and its gradients are synchronised in one backward."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, batches, ctx: StepContext):
        return self.method.training_step(batches, ctx)


class Trainer:
    """Runs one config to completion, writing its run folder."""

    def __init__(self, cfg: RunConfig | ResolvedRun, data: PreparedData | None = None, world: World | None = None):
        # names and method params are checked (a config resolved) before any data is read
        self.run = cfg if isinstance(cfg, ResolvedRun) else resolve_run(cfg)
        self.cfg = cfg = self.run.config
        self.world = world if world is not None else current_world()
        self.progress = Progress(cfg.progress and self.world.is_main)
        self.device = self.world.place(resolve_device(cfg.device))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.world.is_main:  # a second command on a busy folder stops before reading any data
            check_folder_free(cfg.output)
        self.data = data if data is not None else prepare_data(cfg.data)
        torch.manual_seed(cfg.seed)
        self.method = build_method(self.run, self.data).to(self.device)
        if cfg.train.sync_batchnorm and self.world.size > 1:
            sync_batchnorm(self.method, self.device)
        self.speed = resolve_speed(cfg.train, self.device)
        self.backends = configure_backends(self.device)
        # channels-last is markedly faster for small convolutions on CPU (MKL-DNN) and for AMP on GPUs.
        self.method.to(memory_format=self.speed.memory_format)
        # the train and test feeds: DeviceArrays (on the device) or HostFeed (on the host, decoded by workers)
        self.train_arrays, self.test_arrays = make_feeds(self.data.train, self.data.test, self.device, cfg.data,
                                                         self.speed.memory_format)
        check_model_takes_images(cfg, self.method, self.test_arrays, self.data.image_shape)
        making = [s.name for s in self.method.stages() if s.makes_data]
        if making and self.training_images() is None:
            raise ConfigError(f"stage {making[0]!r} of method {cfg.method.name} makes images from the training split "
                              f"on the device; data.storage={cfg.data.storage} keeps it on the host: use data.storage=device")
        if self.method.reads_stored_images() and not isinstance(self.train_arrays, DeviceArrays):
            raise ConfigError(f"method {cfg.method.name} draws its views from the stored images, which "
                              f"data.storage={cfg.data.storage} does not keep with a batch: use data.storage=device")
        self.speed.compile_backbone(self.method.backbone)  # after the check: it compiles nothing for one image
        self.scaler = self.speed.grad_scaler(self.device)
        self.out = Path(cfg.output)
        self.checkpoint_path = self.out / "checkpoint.pt"

    # --- checkpoints ------------------------------------------------------------
    def _save(self, state: RunState, optimizer: torch.optim.Optimizer) -> None:
        # Per-rank state (e.g. a context bank per process) is gathered to rank 0, which alone writes.
        extra = self.world.gather_objects(self.method.extra_state())
        if self.world.is_main:
            self._write_checkpoint(state, optimizer, extra)
        self.world.barrier()  # every rank goes on once the checkpoint is on disk

    def _write_checkpoint(self, state: RunState, optimizer: torch.optim.Optimizer, extra: list) -> None:
        payload = {
            "fingerprint": self.run.fingerprint(),
            "config": self.cfg.to_dict(),  # so a refused config can be told which keys differ
            "stage_index": state.stage_index,
            "epoch": state.epoch,
            "history": state.history,
            "train_seconds": state.train_seconds,
            "cpu_seconds": state.cpu_seconds,
            "made": state.made,
            "speed": self.speed.record(),  # a run never resumes in another precision (see _check_precision)
            "method": self.method.state_dict(),
            "extra": extra[0],
            "optimizer": optimizer.state_dict() if optimizer is not None else {},  # None: resumed at a makes_data stage
        }
        if self.scaler.is_enabled():  # fp16: the loss scale and its growth tracker, for an exact resume
            payload["scaler"] = self.scaler.state_dict()
        if self.world.size > 1:
            payload["extra_ranks"] = extra
        buffer = io.BytesIO()  # serialised first: a full disk then fails in a plain write, which names the file
        torch.save(payload, buffer)
        with atomic_open(self.checkpoint_path) as f:
            f.write(buffer.getbuffer())
        self.saved_epochs = len(state.history)

    def write_fork_checkpoint(self, payload: dict, stage_index: int, source: Path) -> None:
        """This run's checkpoint as ``payload`` (``source``, another run's checkpoint: ``fork``) stood when stage
        ``stage_index`` began: its weights (but the fork stage's own modules), and the earlier stages' curve (the
        test scores of this method's heads) and times; no optimizer state (each stage builds its own). Stage names
        tell the earlier stages' epochs from the later ones'."""
        self._check_precision(payload, source)
        fresh = self.method.fork_fresh_state  # the fork stage's own modules, set up when it starts
        own = self.method.state_dict()
        taken = {key: value for key, value in payload["method"].items() if not key.startswith(fresh)}
        unmatched = sorted(set(taken) ^ {key for key in own if not key.startswith(fresh)})
        if unmatched:
            raise CheckpointMismatchError(f"checkpoint {source} does not hold {type(self.method).__name__}'s earlier "
                                          f"stages' state (e.g. {unmatched[0]}): it cannot be forked into it")
        self.method.load_state_dict({**{k: v for k, v in own.items() if k.startswith(fresh)}, **taken})
        self.method.load_extra_state(payload["extra"])
        earlier = {stage.name for stage in self.method.stages()[:stage_index]}
        heads = set(self.method.heads())  # a fork into another method keeps the earlier scores of its own heads
        history = [{**record, "test": {h: v for h, v in record["test"].items() if h in heads}} if "test" in record
                   else record for record in payload["history"] if record["stage"] in earlier]
        state = RunState(stage_index, 0, history, sum(r["seconds"] for r in history),
                         sum(r.get("cpu_seconds", 0.0) for r in history), payload.get("made", {}))
        self._write_checkpoint(state, None, [self.method.extra_state()])

    def _load(self) -> tuple[RunState, dict | None]:
        if not self.checkpoint_path.exists():
            return RunState(), None
        verify_checkpoint(self.checkpoint_path, "it is never trained from: re-run with --fresh to start the run "
                                                "over, or remove the file")
        try:
            payload = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as err:  # a truncated, foreign or hostile file: say which, in one line
            raise CheckpointMismatchError(
                f"cannot read checkpoint {self.checkpoint_path} ({_load_failure(err)}); only tensors and plain "
                "values are ever loaded from a checkpoint: delete it or use a new output folder") from None
        if not isinstance(payload, dict) or payload.get("fingerprint") not in self.run.accepted_fingerprints():
            raise CheckpointMismatchError(self._mismatch_message(payload))
        self._check_precision(payload)
        self.method.load_state_dict(payload["method"])
        # a run resumed on as many processes as wrote it gets each rank's own state back
        ranks = payload.get("extra_ranks")
        self.method.load_extra_state(ranks[self.world.rank] if ranks and len(ranks) == self.world.size
                                     else payload["extra"])
        if self.scaler.is_enabled() and "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        state = RunState(payload["stage_index"], payload["epoch"], payload["history"], payload["train_seconds"],
                         payload.get("cpu_seconds", 0.0), payload.get("made", {}))
        return state, payload["optimizer"]

    def _check_precision(self, payload: dict, path: Path | None = None) -> None:
        """Refuse a checkpoint (``path``, default this run's) trained in another precision than this run resolves
        to: the config's fingerprint holds ``train.amp`` as written, and ``auto`` resolves per device (bf16 on a
        GPU that has it, float32 elsewhere). Checkpoints written before the switches were recorded trained in
        float32."""
        written = (payload.get("speed") or {}).get("amp", "off")
        if written != self.speed.amp:
            raise CheckpointMismatchError(
                f"checkpoint {path or self.checkpoint_path} was trained with amp {written} and this run resolves "
                f"train.amp={self.cfg.train.amp} to {self.speed.amp} on {self.device}: a run never changes precision "
                f"mid-way; resume where it resolves to {written}, or use a new output folder")

    def _checkpoint_identity(self) -> tuple | None:
        """Which file the checkpoint is (every write renames a new one into place); None if absent."""
        try:
            st = os.stat(self.checkpoint_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _mismatch_message(self, payload) -> str:
        stored = payload.get("config") if isinstance(payload, dict) else None
        if isinstance(stored, dict):
            what = "; ".join(self.run.differences(stored)) or "options no longer known"
        else:  # a checkpoint from before configs were stored in it
            old = payload.get("fingerprint") if isinstance(payload, dict) else None
            what = f"fingerprint {old} != {self.run.fingerprint()}"
        return (f"checkpoint {self.checkpoint_path} was written by another config (checkpoint -> now: {what}); "
                "use a new output folder or delete the checkpoint")

    def training_images(self) -> TrainingImages | None:
        """The training split as the method's ``illustration`` takes it; None when it stays on the host,
        decoded by loader workers (no images on the device to gather by index)."""
        if not isinstance(self.train_arrays, DeviceArrays):
            return None
        cfg = self.cfg
        return TrainingImages(self.train_arrays, self.data.train.labels, cfg.train.batch_size, cfg.sampling.per_class,
                              cfg.data.mean, cfg.data.std)

    # --- training -----------------------------------------------------------------
    def _samplers(self, stage: Stage, stage_index: int, labels: np.ndarray | None = None) -> dict[str, Sampler]:
        """The stage's streams over ``labels`` (default: the run's split; after a ``makes_data`` stage, the split
        and the made data); an epoch of "dataset" length keeps the run's split's length, whatever was made."""
        labels = self.data.train.labels if labels is None else labels
        s = self.cfg.sampling
        specs = {name: stream_spec(stage.streams[name], s.balanced, s.per_class, s.balanced_epoch)
                 for name in stage.stream_order()}
        if len(labels) != len(self.data.train.labels):
            specs = {name: dataclasses.replace(spec, epoch_length=len(self.data.train.labels))
                     if spec.epoch_length == "dataset" else spec for name, spec in specs.items()}
        return {name: Sampler(labels, spec, self.cfg.seed, f"{stage_index}/{name}") for name, spec in specs.items()}

    # --- made data (``Stage.makes_data``) ---------------------------------------------
    def _made_paths(self, stage_name: str) -> tuple[Path, Path]:
        folder = self.out / MADE_FOLDER
        return folder / f"{stage_name}_images.npy", folder / f"{stage_name}_labels.npy"

    def _make_data(self, stage: Stage, stage_index: int) -> dict:
        """Run a ``makes_data`` stage: the method's images, written chunk by chunk (rank 0) as a uint8 .npy
        beside their labels; returns what the checkpoint records of them (count, sha256)."""
        images = self.training_images()
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.cfg.seed, "method", stage_index, 0))
        made: MadeData = self.method.make_data(stage, images, generator)
        labels = np.ascontiguousarray(made.labels, dtype=np.int64)
        shape = (len(labels), *images.arrays.images.shape[1:])
        image_path, label_path = self._made_paths(stage.name)
        digest = hashlib.sha256(labels.tobytes())
        with atomic_open(image_path) if self.world.is_main else contextlib.nullcontext() as f:
            if f is not None:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            rows = 0
            for chunk in made.chunks:
                block = chunk.to("cpu", torch.uint8).contiguous().numpy()
                rows += len(block)
                digest.update(block.tobytes())
                if f is not None:
                    f.write(block.tobytes())
            if rows != len(labels):
                raise RuntimeError(f"stage {stage.name!r} made {rows} images for {len(labels)} labels")
        if self.world.is_main:
            with atomic_open(label_path) as f:
                np.save(f, labels)
        self.world.barrier()
        return {"count": len(labels), "sha256": digest.hexdigest()}

    def _load_made(self, stage_name: str, record: dict | None) -> ArrayDataset:
        """A made set back from the run folder, checked against what the checkpoint recorded of it."""
        image_path, label_path = self._made_paths(stage_name)
        try:
            labels = np.load(label_path)
            images = np.load(image_path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CheckpointMismatchError(
                f"the images stage {stage_name!r} made are unreadable in {image_path.parent} "
                f"({type(err).__name__}); they cannot be made again from this checkpoint: re-run with --fresh") from None
        digest = hashlib.sha256(labels.astype(np.int64).tobytes())
        for start in range(0, len(images), 4096):
            digest.update(np.ascontiguousarray(images[start:start + 4096]).tobytes())
        if record is None or digest.hexdigest() != record["sha256"] or len(labels) != record["count"]:
            raise CheckpointMismatchError(
                f"the images stage {stage_name!r} made ({image_path}) are not those the checkpoint recorded; "
                "they cannot be made again from this checkpoint: re-run with --fresh")
        return ArrayDataset(np.asarray(images), labels.astype(np.int64))

    def _stage_feed(self, stages: list[Stage], stage_index: int, state: RunState):
        """The training feed and labels of a stage: the run's split, then the data of every
        ``makes_data`` stage before it (loaded from the run folder)."""
        made = [self._load_made(s.name, state.made.get(s.name)) for s in stages[:stage_index] if s.makes_data]
        if not made:
            return self.train_arrays, self.data.train.labels
        train = self.data.train
        joined = ArrayDataset(np.concatenate([train.images, *(m.images for m in made)]),
                              np.concatenate([train.labels, *(m.labels for m in made)]), train.class_names)
        d = self.cfg.data
        feed = DeviceArrays(joined, self.device, d.mean, d.std, d.augment, d.padding)
        feed.memory_format = self.speed.memory_format
        return feed, joined.labels

    def _epoch_indices(self, samplers: dict[str, Sampler], driver: str, epoch: int, steps: int,
                       batch: int) -> dict[str, torch.Tensor]:
        """The driver's epoch; the other streams cycle their own epochs to cover the same steps."""
        out = {}
        for name, sampler in samplers.items():
            if name == driver:
                idx = sampler.epoch_indices(epoch)
            else:
                parts, have, k = [], 0, 0
                while have < steps * batch:
                    # the k-th pass of this stream within the epoch gets its own draw id;
                    # the prime spacing keeps the ids of different epochs from colliding
                    part = sampler.epoch_indices(epoch * SECONDARY_PASSES_PER_EPOCH + k)
                    parts.append(part)
                    have += len(part)
                    k += 1
                idx = np.concatenate(parts)
            out[name] = torch.from_numpy(idx)
        return out

    def fit(self, resume: bool = True) -> dict:
        """Train under the run folder's lock. The checkpoint is read, and one of another config
        refused, before anything is written; under the lock it is read again only if it changed."""
        seen = self._checkpoint_identity()
        loaded = self._load() if resume else (RunState(), None)
        self.saved_epochs = len(loaded[0].history)  # what a re-run resumes from, were this one interrupted
        # the folder is rank 0's: it alone holds the lock and writes (the other ranks only read the checkpoint)
        with RunLock(self.out) if self.world.is_main else contextlib.nullcontext():
            if resume and self._checkpoint_identity() != seen:  # another writer finished in between
                loaded = self._load()
            if not self.world.same_everywhere(len(loaded[0].history)):  # e.g. a folder local to each machine
                raise CheckpointMismatchError(
                    f"process {self.world.rank} would resume after epoch {len(loaded[0].history)} of {self.out} and "
                    "another process after a different one: every machine must see the same run folder (a shared "
                    "file system), which rank 0 writes and every process reads to resume")
            if self.world.is_main:
                save_config(self.cfg, self.out / "config.yaml")
            with contextlib.ExitStack() as stack:
                observers = [self.progress]
                if self.cfg.train.tensorboard and self.world.is_main:
                    observers.append(stack.enter_context(TensorBoardLog(self, first_epoch=len(loaded[0].history))))
                try:
                    return self._fit(*loaded, observers)
                except KeyboardInterrupt:
                    raise RunInterrupted(f"interrupted; re-run the same command to resume from epoch "
                                         f"{self.saved_epochs + 1}") from None

    def _fit(self, state: RunState, optimizer_state: dict | None, observers: list) -> dict:
        cfg = self.cfg
        stages = self.method.stages()
        batch = cfg.train.batch_size
        optimizer, results = None, None
        if cfg.model.init_head != "none" and state.stage_index == 0 and state.epoch == 0:  # a fresh run
            self.method.initialise_heads(initial_head_rows(cfg, self.method, self.data, self.device,
                                                           self.speed.memory_format, self.world))
        for stage_index, stage in enumerate(stages):
            if stage_index < state.stage_index:
                continue
            fresh = state.epoch == 0
            self.method.begin_stage(stage, fresh)
            if stage.makes_data:
                state.made[stage.name] = self._make_data(stage, stage_index)
                state.stage_index, state.epoch = stage_index + 1, 0
                if cfg.train.checkpoint:
                    self._save(state, optimizer)
                continue
            feed, labels = self._stage_feed(stages, stage_index, state)
            optimizer = build_optimizer(self.method.trainable_parameters(stage), stage.lr or cfg.train.optim.lr,
                                        cfg.train.optim, self.speed.fused_optimizer)
            trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"] if p.requires_grad)
            self.progress.note(f"{stage.name}: {trainable:,} trainable parameters")
            if optimizer_state is not None and not fresh:
                optimizer.load_state_dict(optimizer_state)
            optimizer_state = None
            # built per stage, after begin_stage: DDP syncs the parameters that require a gradient now
            step = self.world.data_parallel(TrainingStep(self.method), self.method.may_skip_parameters)
            samplers = self._samplers(stage, stage_index, labels)
            steps = self.world.steps(len(samplers[stage.driver]), batch)
            for epoch in range(state.epoch, stage.epochs):
                started, cpu_started = time.perf_counter(), time.process_time()
                logs = self._train_epoch(stage, stage_index, epoch, samplers, steps, optimizer, feed, step)
                seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
                state.train_seconds += seconds
                state.cpu_seconds += cpu_seconds
                record = {"stage": stage.name, "epoch": epoch + 1, "seconds": round(seconds, 3),
                          "cpu_seconds": round(cpu_seconds, 3), "trainable_parameters": trainable, **logs}
                last = stage_index == len(stages) - 1 and epoch == stage.epochs - 1
                if last or (cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0):
                    results = self._evaluate()
                    record["test"] = {h: {k: r[k] for k in ("all", "many", "med", "few")} for h, r in results.items()}
                state.history.append(record)
                for observer in observers:
                    observer.epoch_end(record, stage.epochs)
                state.epoch = epoch + 1
                if state.epoch == stage.epochs:
                    state.stage_index, state.epoch = stage_index + 1, 0
                if self.world.is_main:
                    atomic_write_json(self.out / "curve.json", state.history)
                if cfg.train.checkpoint:
                    self._save(state, optimizer)
        return self._finish(state, results if results is not None else self._evaluate())

    def _train_epoch(self, stage, stage_index, epoch, samplers, steps, optimizer, train_arrays=None,
                     training_step: nn.Module | None = None) -> dict:
        """One epoch on ``train_arrays`` (default: the run's training feed). ``training_step``: the stage's
        step module (DDP on several processes); None: the method's own step, as on one process (the
        benchmarks time epochs so)."""
        if training_step is None:
            training_step = TrainingStep(self.method)
        cfg = self.cfg
        batch = cfg.train.batch_size
        self.method.train_mode(stage)
        self.method.begin_epoch(stage, epoch)
        indices = self._epoch_indices(samplers, stage.driver, epoch, steps, batch)
        dev = self.device
        world = self.world
        augment_seed = derive_seed(cfg.seed, "augment", stage_index, epoch)
        feed = (train_arrays or self.train_arrays).epoch(indices, steps, batch, augment_seed, world)
        method_gen = torch.Generator(device=dev).manual_seed(derive_seed(cfg.seed, "method", stage_index, epoch))
        base_lr = stage.lr or cfg.train.optim.lr
        schedule = stage.schedule or cfg.train.optim.schedule
        optim_cfg = cfg.train.optim
        if stage.milestones is not None or stage.gamma is not None:
            optim_cfg = dataclasses.replace(
                optim_cfg, milestones=optim_cfg.milestones if stage.milestones is None else stage.milestones,
                gamma=optim_cfg.gamma if stage.gamma is None else stage.gamma)
        period = cfg.train.optim.cosine_period or cfg.train.epochs
        total = torch.zeros((), device=dev)
        sums: dict[str, torch.Tensor] = {}
        clip = cfg.train.optim.clip_grad_norm
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clipped = torch.zeros((), device=dev)  # steps whose gradient norm exceeded clip (kept on device: no sync)
        speed, scaler = self.speed, self.scaler
        bar = self.progress.steps(steps, f"{stage.name} {epoch + 1}/{stage.epochs}")
        plan = batch_plan(epoch_length(indices), steps, batch, world)  # each step's rows, as the feed cuts them
        for step, (lo, hi, start, stop), batches in zip(bar, plan, feed):
            lr = learning_rate(optim_cfg, base_lr, schedule, stage.epochs, epoch + step / steps, period,
                               stage.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ctx = StepContext(stage, stage_index, epoch, step, method_gen, BatchShard(start, stop, hi - lo, world))
            speed.step_begins()
            with speed.autocast(dev):
                out = training_step(batches, ctx)
            loss = out.loss.float()
            share = (stop - start) * world.size / (hi - lo)
            if share != 1.0:  # fewer (or more) rows than an even share: weight so the ranks' mean is the batch mean
                loss = loss * share
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # the scaler passes everything through unless amp is fp16; DDP averages
            if clip > 0:
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
                clipped = clipped + (norm > clip)
            scaler.step(optimizer)
            scaler.update()
            total += loss.detach()
            for key, value in out.logs.items():
                sums[key] = sums.get(key, 0.0) + (value.detach().float() if torch.is_tensor(value) else value)
        if world.size > 1:  # the curve logs means over ranks; batch-norm statistics are rank 0's (as DDP)
            reduced = world.mean_(torch.stack([total, *(torch.as_tensor(v, dtype=total.dtype, device=dev)
                                                        for v in sums.values())]))
            total, sums = reduced[0], dict(zip(sums, reduced[1:]))
            world.broadcast_buffers(self.method)
        mean_loss = float(total) / steps
        if not math.isfinite(mean_loss):
            raise DivergenceError(
                f"non-finite training loss ({mean_loss}) in stage {stage.name!r} epoch {epoch + 1}; "
                "lower train.optim.lr or check the data"
            )
        logs = {"loss": round(mean_loss, 5), "lr": lr}
        logs.update({k: round(float(v) / steps, 5) for k, v in sums.items()})
        if clip > 0:
            logs["clipped"] = round(float(clipped) / steps, 5)
        return logs

    def _evaluate(self) -> dict:
        return evaluate(self.method, self.test_arrays, self.cfg.train.test_batch_size, self.data.num_classes,
                        self.data.groups, self.world)

    def _finish(self, state: RunState, results: dict) -> dict:
        default = self.method.default_head
        untrained = self.method.untrained_heads(state.history)
        results = {head: {**r, "untrained": head in untrained} for head, r in results.items()}
        metrics = {
            "config": self.cfg.to_dict(),
            "seed": self.cfg.seed,
            "fingerprint": self.run.fingerprint(),
            "versions": versions(),
            "device": str(self.device),
            "processes": self.world.size,
            "storage": self.train_arrays.storage,
            "speed": self.speed.record(),
            "backends": self.backends,
            # this process's peak, over the session that finished the run (a resumed run: since it resumed)
            "peak_gpu_memory_bytes": (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                                      else None),
            "data_source": {"path": self.data.source, "caveat": self.data.caveat},
            **({"untrained_hint": self.method.untrained_hint(state.history)} if untrained else {}),
            "train_seconds": round(state.train_seconds, 3),
            "cpu_seconds": round(state.cpu_seconds, 3),  # over every session of the run, like train_seconds
            "class_counts": self.data.class_counts.tolist(),
            "groups": {k: v.tolist() for k, v in self.data.groups.items()},
            "default_head": default,
            "result": results[default],
            "heads": results,
            "best_epoch": best_epochs(state.history),
            # per stage: what its optimizer held (the heads and the model.tune mode's parameters)
            "trainable_parameters": {r["stage"]: r["trainable_parameters"] for r in state.history
                                     if "trainable_parameters" in r},
            "curve": state.history,
        }
        if self.world.is_main:
            atomic_write_json(self.out / "metrics.json", metrics)
        return metrics


def best_epochs(curve: list[dict]) -> dict:
    """Per head, the evaluation of the curve with the best All (the earliest on a tie): its stage, epoch and
    All / Many / Med / Few. Chosen on the test set, as LDAM, BBN, CMO and MiSLAS report; the final epoch
    (``heads``) stays the headline."""
    best = {}
    for record in curve:
        for head, scores in record.get("test", {}).items():
            if head not in best or scores["all"] > best[head]["all"]:
                best[head] = {"stage": record["stage"], "epoch": record["epoch"], **scores}
    return best


def train(cfg: RunConfig | ResolvedRun, data: PreparedData | None = None, resume: bool = True) -> dict:
    """Train one config (resolved first, unless it is); returns (and writes to ``cfg.output``/metrics.json)
    its metrics. Under torchrun the process group is set up (and torn down) here and every process
    trains its share."""
    run = cfg if isinstance(cfg, ResolvedRun) else resolve_run(cfg)
    with launched(run.config.device) as world:
        return Trainer(run, data, world).fit(resume=resume)
