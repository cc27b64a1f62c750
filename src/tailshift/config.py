"""Run configuration: YAML + ``key=value`` overrides -> validated dataclasses.

Every check fails with one line naming the key, the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .io import atomic_write_text
from .optim import OPTIMIZERS
from .validation import OneOf, bounded, one_of, rule_of


class ConfigError(ValueError):
    """A configuration value is invalid."""


#: seeds seed numpy's legacy RandomState, which takes 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1


@dataclass
class LongTailConfig:
    profile: str = one_of("exp", ("exp", "step", "none"))
    rho: float = bounded(100.0, ge=1)
    n_max: int | None = bounded(None, ge=1)  # None: N / C
    step_fraction: float = bounded(0.5, gt=0, lt=1)
    seed: int = bounded(0, ge=0, le=MAX_SEED)  # the data seed (fixed across training seeds, as in the paper)


@dataclass
class ContextConfig:
    """CMNIST-LT's coloured context; off unless enabled."""

    enabled: bool = False
    noise: float = bounded(0.25, ge=0, lt=1)
    head_classes: int | None = bounded(None, ge=0)  # None: C // 2; at most C (checked with the data)
    # tab10: the release's sns.color_palette() (matplotlib's cycle); deep: seaborn "deep"
    palette: str = one_of("tab10", ("tab10", "deep"))


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    root: str | None = None
    longtail: LongTailConfig = field(default_factory=LongTailConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    groups: str = one_of("index", ("index", "count"))
    group_bounds: list[int] | None = bounded(None, ge=0)
    mean: list[float] | None = None  # None: pixels / 255 only; else one per channel
    std: list[float] | None = bounded(None, gt=0)
    # none | crop_flip (in-memory arrays) | resized_crop (image files: the ImageNet recipe)
    augment: str = one_of("none", ("none", "crop_flip", "resized_crop"))
    padding: int = bounded(4, ge=0)
    #: follow links (or paths) in data.root that lead outside it; off: such a file is refused
    allow_outside_root: bool = False
    # list datasets (imagenet-lt, places-lt, inat2018, filelist): split files (None: the standard
    # names under data.root or a default data folder's lists/) and the class order
    train_list: str | None = None
    test_list: str | None = None
    # list: labels as in the files | count: re-indexed by descending training count
    class_order: str = one_of("list", ("list", "count"))
    # input pipeline: device (the split on the device as uint8) | stream (worker processes decode
    # batches) | auto (image files stream, in-memory arrays stay on the device when they fit)
    storage: str = one_of("auto", ("auto", "device", "stream"))
    # streaming: loader worker processes per training process
    workers: int = bounded(4, ge=0, note="0: decode in the training process")
    crop_size: int = bounded(224, ge=1)  # image files: random-resized / centre crop side
    resize_size: int = bounded(256, ge=1)  # image files, test: shorter side before the centre crop
    # image files, resized_crop: brightness / contrast / saturation strength
    color_jitter: float = bounded(0.4, ge=0, lt=1, note="0: off")


@dataclass
class ModelConfig:
    name: str = "lenet2d"
    # a local weights file (torchvision's ResNet layout, a state dict or a tailshift checkpoint); never downloaded
    pretrained: str | None = None


@dataclass
class MethodConfig:
    name: str = "ce"
    params: dict = field(default_factory=dict)


@dataclass
class SamplingConfig:
    """How "balanced" streams draw (methods ask for a balanced stream; this picks its form)."""

    balanced: str = one_of("class_aware", ("class_aware", "power"))  # power: q = 0
    per_class: int = bounded(4, ge=1)
    balanced_epoch: str = one_of("balanced", ("balanced", "dataset"))  # balanced: n_max x C draws; dataset: N


@dataclass
class OptimConfig:
    name: str = one_of("sgd", OPTIMIZERS)
    lr: float = bounded(0.1, gt=0)
    momentum: float = bounded(0.0, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    nesterov: bool = False
    # constant | cosine (smooth, per step) | cosine_epoch (the release's) | step
    schedule: str = one_of("constant", ("constant", "cosine", "cosine_epoch", "step"))
    # cosine_epoch's divisor in epochs; None: train.epochs (for every stage)
    cosine_period: int | None = bounded(None, ge=1, note="or null: train.epochs")
    warmup_epochs: int = bounded(0, ge=0)  # and < train.epochs
    milestones: list[int] = bounded(ge=0, default_factory=list)
    gamma: float = bounded(0.1, gt=0)
    # > 0: rescale each step's gradient to at most this total L2 norm
    clip_grad_norm: float = bounded(0.0, ge=0, note="0: off")
    betas: list[float] = bounded(ge=0, lt=1, default_factory=lambda: [0.9, 0.999])  # adamw


@dataclass
class TrainConfig:
    epochs: int = bounded(8, ge=1)
    batch_size: int = bounded(128, ge=1)
    test_batch_size: int = bounded(1000, ge=1)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # epochs between test evaluations; the last epoch is always evaluated
    eval_every: int = bounded(1, ge=0, note="0: the last epoch only")
    checkpoint: bool = True
    sync_batchnorm: bool = False  # several processes: batch-norm statistics over the global batch
    # Speed switches (speed.py resolves "auto" for the run's device; explicit values are honoured):
    # torch.compile of the backbone's feature map: off | default (inductor) | reduce-overhead (+ CUDA graphs);
    # auto: default on CUDA, off on CPU (compiling costs more than a CPU run of these models saves)
    compile: str = one_of("auto", ("auto", "off", "default", "reduce-overhead"))
    # autocast of the training step: off | bf16 | fp16 (with a gradient scaler);
    # auto: bf16 on a CUDA device that has it (no scaler needed), off on CPU (slow there without AMX)
    amp: str = one_of("auto", ("auto", "off", "bf16", "fp16"))
    # the model (and its input batches) channels-last; auto: on everywhere (faster for small convolutions
    # on CPU with oneDNN and for autocast on GPUs; every recorded run trained so)
    channels_last: str = one_of("auto", ("auto", "on", "off"))
    # the optimizer's fused kernel (same update, one launch); auto: on CUDA, off on CPU (recorded CPU runs)
    fused_optimizer: str = one_of("auto", ("auto", "on", "off"))
    # log the curve, every head's groups and a method's illustrations to <output>/tensorboard
    tensorboard: bool = False


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = bounded(0, ge=0, le=MAX_SEED)
    device: str = "auto"
    output: str = "runs/default"
    progress: bool = True
    threads: int | None = bounded(None, ge=1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that shapes the trained model (not where it is written or how it is shown).

        The method's params are hashed as the method resolves them (every default filled in),
        so a config that spells out a default trains, and resumes, as the one that leaves it out.
        Options added after runs were recorded are left out while they hold the value that
        reproduces the older behaviour, so those runs' checkpoints still match their configs.
        """
        return _hash(shaping(self.resolved_dict()))

    def legacy_fingerprint(self) -> str:
        """The fingerprint as written before method params were resolved (the params as given):
        checkpoints written then carry it, and still resume under the same config."""
        return _hash(shaping(self.to_dict()))

    def accepted_fingerprints(self) -> tuple[str, str]:
        """The fingerprints a checkpoint of this config may carry: today's and the legacy one."""
        return self.fingerprint(), self.legacy_fingerprint()

    def resolved_dict(self) -> dict:
        """``to_dict`` with the method's params as the method resolves them (every default filled in)."""
        from .methods.base import resolved_params  # the methods know their defaults; config does not

        d = self.to_dict()
        d["method"]["params"] = resolved_params(self.method.name, self.method.params)
        return d


def _hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


#: options that change where or how a run is written or shown, never the trained model
NOT_FINGERPRINTED = ("output", "progress", "threads", "device", "data.allow_outside_root",
                     "data.workers",  # how many processes decode changes no pixel
                     # the same computation compiled, in another memory layout, or in one fused kernel
                     # (float rounding aside, as with "threads")
                     "train.compile", "train.channels_last", "train.fused_optimizer",
                     "train.tensorboard")

#: option added after the first runs -> its value that changes nothing (see ``RunConfig.fingerprint``);
#: a method param added later goes here too, as "method.params.<name>"
NEUTRAL_LATER_OPTIONS = {
    "train.optim.clip_grad_norm": 0.0,
    "train.optim.cosine_period": None,
    "data.context.palette": "deep",  # the colours of every coloured run recorded before the option existed
    "data.train_list": None,
    "data.test_list": None,
    "data.class_order": "list",
    "data.storage": "auto",
    "data.crop_size": 224,
    "data.resize_size": 256,
    "data.color_jitter": 0.4,
    "model.pretrained": None,
    "train.sync_batchnorm": False,
    "train.optim.name": "sgd",
    "train.optim.betas": [0.9, 0.999],
    # auto is off on CPU, where every recorded run was trained; a checkpoint written on CUDA before the
    # option existed resumes under bf16 there (train.amp=off resumes it as written)
    "train.amp": "auto",
    "method.params.joint_forward": False,
    "method.params.balanced_q": 0.0,
}


def _section(d: dict, path: str) -> tuple[dict, str]:
    *parents, leaf = path.split(".")
    return functools.reduce(lambda node, k: node.get(k, {}), parents, d), leaf


def shaping(values: dict) -> dict:
    """The part of a config dict (``RunConfig.to_dict``, possibly an older one) the fingerprint hashes."""
    d = json.loads(json.dumps(values))
    for path in NOT_FINGERPRINTED:
        section, leaf = _section(d, path)
        section.pop(leaf, None)
    for path, neutral in NEUTRAL_LATER_OPTIONS.items():
        section, leaf = _section(d, path)
        if leaf in section and section[leaf] == neutral:
            del section[leaf]
    return d


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):  # an empty mapping (no method params) flattens to nothing
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for each option that shapes the model and differs (absent: the neutral default)."""
    a, b = _flatten(shaping(old)), _flatten(shaping(new))
    shown = lambda d, key: repr(d[key]) if key in d else "(unset)"  # noqa: E731
    return [f"{key}: {shown(a, key)} -> {shown(b, key)}"
            for key in sorted(set(a) | set(b)) if shown(a, key) != shown(b, key)]


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key)
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported type {hint}")


def _switch_word(value: Any, rule) -> Any:
    """YAML 1.1 reads on / off (and yes / no, true / false) as booleans: for a choice that has the
    words "on" / "off" (``train.amp=off``), a boolean stands for them."""
    if isinstance(value, bool) and isinstance(rule, OneOf) and "off" in rule.names():
        return "on" if value else "off"
    return value


def build_dataclass(cls, values: Any, prefix: str):
    """``values`` (a mapping) as a ``cls`` instance: unknown keys, types and declared rules checked."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; known: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in values:
            key = f"{prefix}.{name}" if prefix else name
            rule = rule_of(cls, name)
            kwargs[name] = _convert(_switch_word(values[name], rule), hints[name], key)
            complaint = rule.check(kwargs[name], key) if rule is not None else None
            if complaint:
                raise ConfigError(complaint)
    try:
        return cls(**kwargs)
    except ValueError as err:  # a class's own cross-field checks (__post_init__) speak for themselves
        raise ConfigError(str(err)) from None


def _check(cfg: RunConfig) -> None:
    """What no single field can check: names, options that depend on each other, method params."""
    d, tr = cfg.data, cfg.train
    if (d.mean is None) != (d.std is None):
        raise ConfigError("data.mean and data.std must be given together")
    if d.mean is not None and len(d.mean) != len(d.std):
        raise ConfigError(f"data.mean and data.std must have one value per channel each, got {len(d.mean)} "
                          f"and {len(d.std)} values")
    if d.group_bounds is not None and (len(d.group_bounds) != 2 or d.group_bounds[0] > d.group_bounds[1]):
        raise ConfigError(f"data.group_bounds must be [b1, b2] with b1 <= b2, got {d.group_bounds}")
    if d.resize_size < d.crop_size:
        raise ConfigError(f"data.resize_size must be >= data.crop_size ({d.crop_size}), got {d.resize_size}")
    if tr.optim.warmup_epochs >= tr.epochs:
        raise ConfigError(f"train.optim.warmup_epochs must be in [0, epochs), got {tr.optim.warmup_epochs}")
    if len(tr.optim.betas) != 2:
        raise ConfigError(f"train.optim.betas must hold 2 numbers (AdamW's beta1, beta2), got {tr.optim.betas}")
    if tr.optim.nesterov and tr.optim.momentum <= 0:
        raise ConfigError(f"train.optim.nesterov=true needs train.optim.momentum > 0, got {tr.optim.momentum}")
    if not (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    if not cfg.output.strip():
        raise ConfigError(f"output must name a folder for the run, got {cfg.output!r}")
    if tr.tensorboard:
        from .tensorboard_log import require_tensorboard

        require_tensorboard()
    _check_components(cfg)


def _check_components(cfg: RunConfig) -> None:
    """Registered names, and the method's params against its ``Params`` class (types and rules)."""
    from .data.sources import DATASETS
    from .methods import METHODS
    from .methods.base import build_params
    from .models import MODELS

    DATASETS.get(cfg.data.dataset)
    MODELS.get(cfg.model.name)
    build_params(METHODS.get(cfg.method.name), cfg.method.params)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(str(getattr(err, "problem", None) or err).split()) + where


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` with the value parsed as YAML (so 0.1, true, [1, 2] and null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({_yaml_problem(err)})") from None
    return key.strip().split("."), value


def merge(base: dict, path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a mapping")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # safe_load: a python/... tag is refused here, never run
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def build_config(values: dict, overrides: list[str] = ()) -> RunConfig:
    values = json.loads(json.dumps(values))  # deep copy of plain data
    for item in overrides:
        path, value = parse_override(item)
        merge(values, path, value)
    cfg = build_dataclass(RunConfig, values, "")
    _check(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    return build_config(read_yaml(path) if path else {}, overrides)


def config_path(name: str) -> Path:
    """A shipped config by name (``table1/fashion-lt_crt``) or any YAML path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    folder = Path(str(resources.files("tailshift") / "configs"))
    shipped = folder / f"{name}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
    raise ValueError(f"no config {name!r}: not a YAML file, and not a shipped config (known: {', '.join(known)})")


def save_config(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
