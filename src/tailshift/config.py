"""Run configuration: YAML + ``key=value`` overrides -> validated dataclasses.

Every check fails with one line naming the key, the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value is invalid."""


@dataclass
class LongTailConfig:
    profile: str = "exp"  # exp | step | none
    rho: float = 100.0
    n_max: int | None = None  # None: N / C
    step_fraction: float = 0.5
    seed: int = 0  # the data seed (fixed across training seeds, as in the paper)


@dataclass
class ContextConfig:
    """CMNIST-LT's coloured context; off unless enabled."""

    enabled: bool = False
    noise: float = 0.25
    head_classes: int | None = None  # None: C // 2
    palette: str = "tab10"  # tab10: the release's sns.color_palette() (matplotlib's cycle); deep: seaborn "deep"


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    root: str | None = None
    longtail: LongTailConfig = field(default_factory=LongTailConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    groups: str = "index"  # index | count
    group_bounds: list[int] | None = None
    mean: list[float] | None = None  # None: pixels / 255 only
    std: list[float] | None = None
    augment: str = "none"  # none | crop_flip
    padding: int = 4


@dataclass
class ModelConfig:
    name: str = "lenet2d"


@dataclass
class MethodConfig:
    name: str = "ce"
    params: dict = field(default_factory=dict)


@dataclass
class SamplingConfig:
    """How "balanced" streams draw (methods ask for a balanced stream; this picks its form)."""

    balanced: str = "class_aware"  # class_aware | power (q = 0)
    per_class: int = 4
    balanced_epoch: str = "balanced"  # balanced (n_max x C) | dataset (N)


@dataclass
class OptimConfig:
    name: str = "sgd"  # a registered optimizer: sgd | adamw
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "constant"  # constant | cosine (smooth, per step) | cosine_epoch (the release's) | step
    cosine_period: int | None = None  # cosine_epoch's divisor in epochs; None: train.epochs (for every stage)
    warmup_epochs: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    clip_grad_norm: float = 0.0  # > 0: rescale each step's gradient to at most this total L2 norm
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 128
    test_batch_size: int = 1000
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_every: int = 1  # epochs between test evaluations; the last epoch is always evaluated
    checkpoint: bool = True


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    device: str = "auto"
    output: str = "runs/default"
    progress: bool = True
    threads: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that shapes the trained model (not where it is written or how it is shown).

        The method's params are hashed as the method resolves them (every default filled in),
        so a config that spells out a default trains, and resumes, as the one that leaves it out.
        Options added after runs were recorded are left out while they hold the value that
        reproduces the older behaviour, so those runs' checkpoints still match their configs.
        """
        from .methods.base import resolved_params  # the methods know their defaults; config does not

        return self._hash({"params": resolved_params(self.method.name, self.method.params)})

    def legacy_fingerprint(self) -> str:
        """The fingerprint as written before method params were resolved (the params as given):
        checkpoints written then carry it, and still resume under the same config."""
        return self._hash({})

    def _hash(self, method_update: dict) -> str:
        d = self.to_dict()
        d["method"].update(method_update)
        for key in ("output", "progress", "threads", "device"):
            d.pop(key)
        for path, neutral in NEUTRAL_LATER_OPTIONS.items():
            *parents, leaf = path.split(".")
            section = functools.reduce(lambda node, k: node.get(k, {}), parents, d)
            if leaf in section and section[leaf] == neutral:  # (a method param exists for some methods only)
                del section[leaf]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


#: option added after the first runs -> its value that changes nothing (see ``RunConfig.fingerprint``);
#: a method param added later goes here too, as "method.params.<name>"
NEUTRAL_LATER_OPTIONS = {
    "train.optim.clip_grad_norm": 0.0,
    "train.optim.cosine_period": None,
    "data.context.palette": "deep",  # the colours of every coloured run recorded before the option existed
    "train.optim.name": "sgd",
    "train.optim.betas": [0.9, 0.999],
}


CHOICES = {
    "data.longtail.profile": ("exp", "step", "none"),
    "data.groups": ("index", "count"),
    "data.augment": ("none", "crop_flip"),
    "sampling.balanced": ("class_aware", "power"),
    "sampling.balanced_epoch": ("balanced", "dataset"),
    "train.optim.schedule": ("constant", "cosine", "cosine_epoch", "step"),
    "data.context.palette": ("tab10", "deep"),
}


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
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
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
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


def _build(cls, values: Any, prefix: str):
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
            kwargs[name] = _convert(values[name], hints[name], key)
    return cls(**kwargs)


def _check(cfg: RunConfig) -> None:
    flat = {
        "data.longtail.profile": cfg.data.longtail.profile,
        "data.groups": cfg.data.groups,
        "data.augment": cfg.data.augment,
        "sampling.balanced": cfg.sampling.balanced,
        "sampling.balanced_epoch": cfg.sampling.balanced_epoch,
        "train.optim.schedule": cfg.train.optim.schedule,
        "data.context.palette": cfg.data.context.palette,
    }
    for key, value in flat.items():
        if value not in CHOICES[key]:
            raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}; got {value!r}")
    lt = cfg.data.longtail
    if lt.rho < 1:
        raise ConfigError(f"data.longtail.rho must be >= 1, got {lt.rho}")
    if lt.n_max is not None and lt.n_max < 1:
        raise ConfigError(f"data.longtail.n_max must be >= 1, got {lt.n_max}")
    if not 0 <= cfg.data.context.noise < 1:
        raise ConfigError(f"data.context.noise must be in [0, 1), got {cfg.data.context.noise}")
    if (cfg.data.mean is None) != (cfg.data.std is None):
        raise ConfigError("data.mean and data.std must be given together")
    if cfg.data.std is not None and any(s <= 0 for s in cfg.data.std):
        raise ConfigError(f"data.std must be positive, got {cfg.data.std}")
    if cfg.data.group_bounds is not None and len(cfg.data.group_bounds) != 2:
        raise ConfigError(f"data.group_bounds must be [b1, b2], got {cfg.data.group_bounds}")
    tr = cfg.train
    for key, value in (("train.epochs", tr.epochs), ("train.batch_size", tr.batch_size),
                       ("train.test_batch_size", tr.test_batch_size), ("sampling.per_class", cfg.sampling.per_class)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if tr.eval_every < 0:
        raise ConfigError(f"train.eval_every must be >= 0, got {tr.eval_every}")
    if tr.optim.lr <= 0:
        raise ConfigError(f"train.optim.lr must be > 0, got {tr.optim.lr}")
    if not tr.optim.clip_grad_norm >= 0:
        raise ConfigError(f"train.optim.clip_grad_norm must be >= 0 (0: off), got {tr.optim.clip_grad_norm}")
    if tr.optim.cosine_period is not None and tr.optim.cosine_period < 1:
        raise ConfigError(f"train.optim.cosine_period must be >= 1 (or null: train.epochs), got {tr.optim.cosine_period}")
    if tr.optim.warmup_epochs < 0 or tr.optim.warmup_epochs >= tr.epochs:
        raise ConfigError(f"train.optim.warmup_epochs must be in [0, epochs), got {tr.optim.warmup_epochs}")
    if not (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` with the value parsed as YAML (so 0.1, true, [1, 2] and null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err.problem})") from None
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
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def build_config(values: dict, overrides: list[str] = ()) -> RunConfig:
    values = json.loads(json.dumps(values))  # deep copy of plain data
    for item in overrides:
        path, value = parse_override(item)
        merge(values, path, value)
    cfg = _build(RunConfig, values, "")
    _check(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    return build_config(read_yaml(path) if path else {}, overrides)


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
