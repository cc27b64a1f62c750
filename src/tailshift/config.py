"""Run configuration: YAML + ``key=value`` overrides -> validated, frozen dataclasses.

Every check fails with one line naming the key, the bad value and what is allowed. What this
module cannot know (which datasets, models and methods are registered, a method's params) is
checked by ``resolve.resolve_run``, which the engine calls before any data is read.

Config files and override values are read strictly (``_load_yaml``): YAML 1.2's core schema, so
``yes``/``on`` and dates are strings and ``1e-4`` is a number; an integer with a leading zero
(``010``, ``09``) is refused, since YAML 1.1 reads ``010`` as 8; a duplicate key is refused with
both lines; only strings, numbers, true/false, null, lists and mappings are taken (no tags such
as ``!!binary``); aliases may not expand past ``MAX_CONFIG_VALUES`` values; a file may hold at
most ``MAX_CONFIG_BYTES``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import fingerprint
from .fingerprint import added_later, unhashed
from .io import atomic_write_text
from .models.base import READOUTS
from .models.timm_backbone import check_timm_args
from .models.tuning import TUNE_MODES
from .optim import OPTIMIZERS
from .schedules import SCHEDULES
from .validation import ConfigError, bounded, build_dataclass, one_of


#: model.init_head: how the heads' class vectors start (methods/head_init.py)
INIT_HEADS = ("none", "text_feat", "class_mean", "auto")
#: data.tte: the eval recipe's views of an image, their logits averaged (data/transforms.py)
TTE_MODES = ("none", "fivecrop")

#: seeds seed numpy's legacy RandomState, which takes 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class LongTailConfig:
    profile: str = one_of("exp", ("exp", "step", "none"))
    rho: float = bounded(100.0, ge=1)
    n_max: int | None = bounded(None, ge=1)  # None: N / C
    step_fraction: float = bounded(0.5, gt=0, lt=1)
    seed: int = bounded(0, ge=0, le=MAX_SEED)  # the data seed (fixed across training seeds, as in the paper)


@dataclass(frozen=True)
class ContextConfig:
    """CMNIST-LT's coloured context; off unless enabled."""

    enabled: bool = False
    noise: float = bounded(0.25, ge=0, lt=1)
    head_classes: int | None = bounded(None, ge=0)  # None: C // 2; at most C (checked with the data)
    # tab10: the release's sns.color_palette() (matplotlib's cycle); deep: seaborn "deep"
    # (deep: the colours of every coloured run recorded before the option existed)
    palette: str = added_later(one_of("tab10", ("tab10", "deep")), neutral="deep")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"
    root: str | None = None
    longtail: LongTailConfig = field(default_factory=LongTailConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    groups: str = one_of("index", ("index", "count"))
    group_bounds: tuple[int, ...] | None = bounded(None, ge=0)
    mean: tuple[float, ...] | None = None  # None: pixels / 255 only; else one per channel
    std: tuple[float, ...] | None = bounded(None, gt=0)
    # none | crop_flip (in-memory arrays) | resized_crop (image files: the ImageNet recipe)
    augment: str = one_of("none", ("none", "crop_flip", "resized_crop"))
    padding: int = bounded(4, ge=0)
    #: follow links (or paths) in data.root that lead outside it; off: such a file is refused
    allow_outside_root: bool = unhashed(False)
    # list datasets (imagenet-lt, places-lt, inat2018, filelist): split files (None: the standard
    # names under data.root or a default data folder's lists/) and the class order
    train_list: str | None = added_later(None, neutral=None)
    test_list: str | None = added_later(None, neutral=None)
    # list: labels as in the files | count: re-indexed by descending training count
    class_order: str = added_later(one_of("list", ("list", "count")), neutral="list")
    # input pipeline: device (the split on the device as uint8) | host (the split stays on the host, in
    # memory or as image files; loader worker processes decode and augment batches) | auto (image files
    # stay on the host, in-memory arrays go to the device when they fit)
    storage: str = added_later(one_of("auto", ("auto", "device", "host")), neutral="auto")
    # host storage: loader worker processes per training process (how many processes decode changes no pixel)
    workers: int = unhashed(bounded(4, ge=0, note="0: decode in the training process"))
    crop_size: int = added_later(bounded(224, ge=1), neutral=224)  # image files: random-resized / centre crop side
    # image files, test: shorter side before the centre crop
    resize_size: int = added_later(bounded(256, ge=1), neutral=256)
    # image files, resized_crop: brightness / contrast / saturation strength
    color_jitter: float = added_later(bounded(0.4, ge=0, lt=1, note="0: off"), neutral=0.4)
    # image files: a folder made by `tailshift pack` from this data, read instead of decoding the files
    pack: str | None = added_later(None, neutral=None)
    # image files, train recipe: cpu (loader workers decode with Pillow) | gpu (workers read the files; the
    # device decodes the JPEGs and augments the batch: data/device_decode.py)
    decode: str = added_later(one_of("cpu", ("cpu", "gpu")), neutral="cpu")
    # test-time ensembling of the eval recipe: none | fivecrop (the shorter side to tte_resize_size, then the
    # four corner and the central crop_size crops, logits averaged: LIFT's, shijxcs/LIFT trainer.py lines 116-123)
    tte: str = added_later(one_of("none", TTE_MODES), neutral="none")
    tte_resize_size: int = added_later(bounded(248, ge=1), neutral=248)  # LIFT: resolution + expand (224 + 24)
    # a file of the classes' names (list datasets; None: the dataset's standard file, looked for as its lists are)
    class_names: str | None = added_later(None, neutral=None)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet2d"
    # a local weights file (torchvision's ResNet layout, a state dict or a tailshift checkpoint); "none" (as null):
    # random weights; "hub" (timm:, clip: models): the library's own download, the one time anything is fetched
    pretrained: str | None = added_later(None, neutral=None)
    # which parameters train besides the heads (models/tuning.py): full, linear, bitfit, vpt_*, lora, adapter, ...
    tune: str = added_later(one_of("full", TUNE_MODES), neutral="full")
    # adapter / AdaptFormer bottleneck width and LoRA rank; null: LIFT's rule from the class and block counts
    tune_dim: int | None = added_later(bounded(None, ge=1, note="or null: LIFT's rule"), neutral=None)
    vpt_length: int = added_later(bounded(10, ge=1), neutral=10)  # prompt tokens per block (vpt_*), LIFT's 10
    # a vision transformer's embedding (models/base.py): avg (the mean of the last block's patch tokens, a function
    # of the patch grid that Grad-CAM and CSA read) | token (the class token as the model was pretrained to output
    # it: CLIP's after ln_post and before proj, as LIFT reads it, shijxcs/LIFT models/peft_vit.py lines 457-459)
    readout: str = added_later(one_of("avg", READOUTS), neutral="avg")
    # the heads' first class vectors (methods/head_init.py; LIFT's cfg.init_head, shijxcs/LIFT utils/config.py
    # line 53): none (each head's own initialisation) | text_feat (the CLIP text tower's embeddings of init_prompt
    # per class name) | class_mean (the mean embedding of each class's training images, eval recipe) | auto
    # (text_feat on a backbone with a text tower, else class_mean: LIFT's per-backbone choice)
    init_head: str = added_later(one_of("none", INIT_HEADS), neutral="none")
    init_prompt: str = added_later("a photo of a {}.", neutral="a photo of a {}.")  # LIFT trainer.py line 344
    # timm:NAME only: keyword arguments of timm.create_model that shape the architecture (e.g. a small ViT:
    # {patch_size: 4, embed_dim: 96, depth: 4, num_heads: 3}); {}: the named model as timm defines it
    timm_args: dict = added_later(field(default_factory=dict), neutral={})

    def __post_init__(self):
        if self.init_prompt.count("{}") != 1:
            raise ConfigError(f"model.init_prompt must hold one {{}} (where the class name goes), got {self.init_prompt!r}")
        if self.pretrained == "none":  # the word for null: the same run, the same fingerprint
            object.__setattr__(self, "pretrained", None)


@dataclass(frozen=True)
class MethodConfig:
    name: str = "ce"
    #: as given; ``resolve.resolve_run`` builds them into the method's ``Params`` (every default filled in)
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingConfig:
    """How "balanced" streams draw (methods ask for a balanced stream; this picks its form)."""

    balanced: str = one_of("class_aware", ("class_aware", "power"))  # power: q = 0
    per_class: int = bounded(4, ge=1)
    balanced_epoch: str = one_of("balanced", ("balanced", "dataset"))  # balanced: n_max x C draws; dataset: N


@dataclass(frozen=True)
class OptimConfig:
    name: str = added_later(one_of("sgd", OPTIMIZERS), neutral="sgd")
    lr: float = bounded(0.1, gt=0)
    momentum: float = bounded(0.0, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    nesterov: bool = False
    # constant | cosine (smooth, per step) | cosine_epoch (the release's) | step | bbn_multistep (BBN's)
    schedule: str = one_of("constant", SCHEDULES)
    # cosine_epoch's divisor in epochs; None: train.epochs (for every stage)
    cosine_period: int | None = added_later(bounded(None, ge=1, note="or null: train.epochs"), neutral=None)
    warmup_epochs: int = bounded(0, ge=0)  # and < train.epochs
    milestones: tuple[int, ...] = bounded((), ge=0)
    gamma: float = bounded(0.1, gt=0)
    # > 0: rescale each step's gradient to at most this total L2 norm
    clip_grad_norm: float = added_later(bounded(0.0, ge=0, note="0: off"), neutral=0.0)
    betas: tuple[float, ...] = added_later(bounded((0.9, 0.999), ge=0, lt=1), neutral=(0.9, 0.999))  # adamw


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = bounded(8, ge=1)
    batch_size: int = bounded(128, ge=1)
    test_batch_size: int = bounded(1000, ge=1)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # epochs between test evaluations; the last epoch is always evaluated
    eval_every: int = bounded(1, ge=0, note="0: the last epoch only")
    checkpoint: bool = True
    sync_batchnorm: bool = added_later(False, neutral=False)  # several processes: batch-norm statistics over the global batch
    # Speed switches (speed.py resolves "auto" for the run's device; explicit values are honoured). Compiled,
    # in another memory layout or in one fused kernel, the computation is the same (float rounding aside,
    # as with ``threads``), so only amp enters the fingerprint:
    # torch.compile of the backbone's feature map: off | default (inductor) | reduce-overhead (+ CUDA graphs);
    # auto: default on CUDA, off on CPU (compiling costs more than a CPU run of these models saves)
    compile: str = unhashed(one_of("auto", ("auto", "off", "default", "reduce-overhead")))
    # autocast of the training step: off | bf16 | fp16 (with a gradient scaler);
    # auto: bf16 on a CUDA device that has it (no scaler needed), off on CPU (slow there without AMX)
    # (auto is off on CPU, where every recorded run was trained; a checkpoint written on CUDA before the
    # option existed resumes under bf16 there, and with train.amp=off as written)
    amp: str = added_later(one_of("auto", ("auto", "off", "bf16", "fp16")), neutral="auto")
    # the model (and its input batches) channels-last; auto: on everywhere (faster for small convolutions
    # on CPU with oneDNN and for autocast on GPUs; every recorded run trained so)
    channels_last: str = unhashed(one_of("auto", ("auto", "on", "off")))
    # the optimizer's fused kernel (same update, one launch); auto: on CUDA, off on CPU (recorded CPU runs)
    fused_optimizer: str = unhashed(one_of("auto", ("auto", "on", "off")))
    # log the curve, every head's groups and a method's illustrations to <output>/tensorboard
    tensorboard: bool = unhashed(False)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = bounded(0, ge=0, le=MAX_SEED)
    # where and how the run is written or shown, never what it trains
    device: str = unhashed("auto")
    output: str = unhashed("runs/default")
    progress: bool = unhashed(True)
    threads: int | None = unhashed(bounded(None, ge=1))

    def to_dict(self) -> dict:
        """The config as plain data (lists, not tuples): what ``config.yaml`` and ``metrics.json`` hold."""
        return plain(self)


def plain(value: Any) -> Any:
    """A config (or a method's ``Params``) as plain data: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    return value


def _described(params_class: type | None) -> dict[str, type]:
    return {"method.params": params_class} if params_class is not None else {}


def shaping(values: dict, params_class: type | None = None) -> dict:
    """The part of a config dict (``RunConfig.to_dict``, possibly an older one) the fingerprint hashes:
    without the fields declared ``unhashed``, nor those ``added_later`` at their neutral value; the
    method params' own declarations apply when their ``Params`` class is given."""
    return fingerprint.shaped(values, RunConfig, _described(params_class))


def config_fingerprint(values: dict, params_class: type | None = None) -> str:
    """Hash of everything in a config dict that shapes the trained model (``shaping``)."""
    return fingerprint.digest(shaping(values, params_class))


def config_differences(old: dict, new: dict, params_class: type | None = None) -> list[str]:
    """``key: old -> new`` for each option that shapes the model and differs (absent: the neutral default)."""
    return fingerprint.differences(shaping(old, params_class), shaping(new, params_class))


def _check(cfg: RunConfig) -> None:
    """What no single field can check: options that depend on each other."""
    d, tr = cfg.data, cfg.train
    if (d.mean is None) != (d.std is None):
        raise ConfigError("data.mean and data.std must be given together")
    if d.mean is not None and len(d.mean) != len(d.std):
        raise ConfigError(f"data.mean and data.std must have one value per channel each, got {len(d.mean)} "
                          f"and {len(d.std)} values")
    if d.group_bounds is not None and (len(d.group_bounds) != 2 or d.group_bounds[0] > d.group_bounds[1]):
        raise ConfigError(f"data.group_bounds must be [b1, b2] with b1 <= b2, got {list(d.group_bounds)}")
    if d.tte != "none" and d.tte_resize_size < d.crop_size:
        raise ConfigError(f"data.tte_resize_size must be >= data.crop_size ({d.crop_size}), got {d.tte_resize_size}")
    if d.resize_size < d.crop_size:
        raise ConfigError(f"data.resize_size must be >= data.crop_size ({d.crop_size}), got {d.resize_size}")
    if cfg.model.timm_args:
        try:
            check_timm_args(cfg.model.name, cfg.model.timm_args)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if tr.optim.warmup_epochs >= tr.epochs:
        raise ConfigError(f"train.optim.warmup_epochs must be in [0, epochs), got {tr.optim.warmup_epochs}")
    if len(tr.optim.betas) != 2:
        raise ConfigError(f"train.optim.betas must hold 2 numbers (AdamW's beta1, beta2), got {list(tr.optim.betas)}")
    if tr.optim.nesterov and tr.optim.momentum <= 0:
        raise ConfigError(f"train.optim.nesterov=true needs train.optim.momentum > 0, got {tr.optim.momentum}")
    if not (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    if not cfg.output.strip():
        raise ConfigError(f"output must name a folder for the run, got {cfg.output!r}")


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(str(getattr(err, "problem", None) or err).split()) + where


#: a config file larger than this is refused before it is read (the largest shipped one is a few KiB)
MAX_CONFIG_BYTES = 1 << 20
#: values a config may hold once its aliases are expanded (an alias "bomb" grows exponentially)
MAX_CONFIG_VALUES = 100_000

_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}


class _Yaml12Resolver(yaml.resolver.Resolver):
    """YAML 1.2's core schema for plain scalars: integers (no 1.1 octal, ``_`` or ``1:30``), floats
    (``1e-4`` too), true/false and null only; a date or ``yes`` is a string."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers
                if tag.rsplit(":", 1)[1] not in ("int", "float", "bool", "timestamp", "merge", "value")]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()}


_Yaml12Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Yaml12Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+.0123456789"))
_RESOLVER_12 = _Yaml12Resolver()


class _Yaml12Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
                    yaml.constructor.SafeConstructor, _Yaml12Resolver):
    """Composes only (``_plain`` builds the values), with YAML 1.2's scalar rules."""

    def __init__(self, stream):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        _Yaml12Resolver.__init__(self)


class _Dumper(yaml.SafeDumper):
    """Quotes a string that YAML 1.1 or 1.2 would read as something else (``yes``, ``1e5``, ``010``)."""

    def resolve(self, kind, value, implicit):
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag == "tag:yaml.org,2002:str":
            return _RESOLVER_12.resolve(kind, value, implicit)
        return tag


def _scalar(node: yaml.ScalarNode, key: str) -> Any:
    """A scalar by YAML 1.2's core rules; a leading zero (``010``: 8 in YAML 1.1, 10 in 1.2) is refused."""
    kind, text = node.tag.rsplit(":", 1)[1], node.value
    digits = text.lstrip("+-")
    if kind == "int" and len(digits) > 1 and digits[0] == "0" and digits.isdigit():
        raise ConfigError(f"{key}: {text} has a leading zero (YAML 1.1 reads 010 as octal 8, YAML 1.2 as 10); "
                          f"write it without (or 0o... for octal)")
    try:
        if kind == "int":
            sign = -1 if text.startswith("-") else 1
            return sign * int(digits, 0) if digits.startswith(("0x", "0o")) else int(text)
        if kind == "float":
            low = text.lower()
            return float(low.replace(".inf", "inf").replace(".nan", "nan"))
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if kind == "null":
            if text not in ("", "~", "null", "Null", "NULL"):
                raise ValueError
            return None
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a YAML 1.2 {kind}") from None
    return text


def _plain(node: yaml.Node, key: str, budget: list[int]) -> Any:
    """The node as plain JSON-like data, refusing what a config cannot hold: other tags (dates,
    binary, python objects), duplicate keys (naming both lines) and too many values once aliases
    are expanded (counted before they are, so a bomb stops at once)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"more than {MAX_CONFIG_VALUES} values once aliases are expanded (at {key or 'the top'}, "
                          f"line {node.start_mark.line + 1}); aliases may not multiply a config")
    if node.tag not in _PLAIN_TAGS:
        where = f" (key {key})" if key else ""
        raise ConfigError(f"the tag {node.tag!r} at line {node.start_mark.line + 1}, column "
                          f"{node.start_mark.column + 1}{where} is not allowed; config values are strings, numbers, "
                          "true/false, null, lists and mappings")
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, key or "the value")
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, f"{key}[{i}]", budget) for i, item in enumerate(node.value)]
    out: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN_TAGS:
            raise ConfigError(f"{key or 'the top level'}: a key at line {key_node.start_mark.line + 1} is not a "
                              "plain name")
        name = key_node.value
        path = f"{key}.{name}" if key else name
        line = key_node.start_mark.line + 1
        if name in out:
            raise ConfigError(f"duplicate key {path} at lines {lines[name]} and {line}")
        out[name], lines[name] = _plain(value_node, path, budget), line
    return out


def _load_yaml(text: str, key: str = "") -> Any:
    """``text`` as plain data (``_plain``'s rules); YAML syntax errors as ``yaml.YAMLError``."""
    try:
        node = yaml.compose(text, Loader=_Yaml12Loader)
        return None if node is None else _plain(node, key, [MAX_CONFIG_VALUES])
    except RecursionError:
        raise ConfigError(f"{key or 'the config'} is nested too deeply (or an alias holds itself)") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` with the value parsed as YAML (so 0.1, true, [1, 2] and null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=4)")
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw, key.strip()) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({_yaml_problem(err)})") from None
    except ConfigError as err:
        raise ConfigError(f"override {text!r}: {err}") from None
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
    """A config file as plain data by ``_load_yaml``'s rules (YAML 1.2, strict), at most ``MAX_CONFIG_BYTES``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {size} bytes; a config may hold at most {MAX_CONFIG_BYTES} "
                          f"({MAX_CONFIG_BYTES >> 20} MiB)")
    try:
        data = _load_yaml(path.read_bytes().decode("utf-8-sig")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:  # composed only: a python/... tag is refused by _plain, never run
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


#: the key of a config's values for other imbalance ratios: ``per_rho: {"50": {method: {params: ...}}}``
PER_RHO_KEY = "per_rho"


def _longtail(values: dict) -> dict:
    """``data.longtail`` of plain config data ({} when not given or not a mapping: checked later)."""
    data = values.get("data", {})
    longtail = data.get("longtail", {}) if isinstance(data, dict) else {}
    return longtail if isinstance(longtail, dict) else {}


def per_rho_values(per_rho: Any, rho: Any) -> dict:
    """The entry of ``per_rho`` for the imbalance ratio ``rho`` (none: {}), every entry checked: keys are
    ratios (numbers >= 1), values mappings that leave ``data.longtail.rho`` alone."""
    if not isinstance(per_rho, dict):
        raise ConfigError(f"{PER_RHO_KEY} must map imbalance ratios to config values, got {per_rho!r}")
    chosen: dict = {}
    for key, entry in per_rho.items():
        try:
            ratio = float(key)
        except ValueError:
            ratio = float("nan")
        if not ratio >= 1 or math.isinf(ratio):
            raise ConfigError(f"{PER_RHO_KEY}: key {key!r} is not an imbalance ratio (a number >= 1)")
        if not isinstance(entry, dict):
            raise ConfigError(f"{PER_RHO_KEY}.{key} must be a mapping of config values, got {entry!r}")
        if "rho" in _longtail(entry):
            raise ConfigError(f"{PER_RHO_KEY}.{key} may not set data.longtail.rho (it is chosen by it)")
        if isinstance(rho, (int, float)) and not isinstance(rho, bool) and ratio == rho:
            chosen = entry
    return chosen


#: a value a template leaves to the user (``data.root: ???``): refused until an override gives it
REQUIRED = "???"


def _required(values: dict, prefix: str = "") -> list[str]:
    """The keys of ``values`` (nested, dotted) still holding ``REQUIRED``."""
    found = []
    for key, value in values.items():
        if isinstance(value, dict):
            found += _required(value, f"{prefix}{key}.")
        elif value == REQUIRED:
            found.append(f"{prefix}{key}")
    return found


def build_config(values: dict, overrides: list[str] = ()) -> RunConfig:
    """A config from plain data plus ``key=value`` overrides, every field and cross-field rule checked.
    ``per_rho``'s entry for the run's imbalance ratio (after the overrides) is merged over the data and
    under the overrides, then dropped: a config serves every ratio, each with the values its authors
    tuned for it, and resolves to the same form. A value still ``REQUIRED`` (``???``) is refused."""
    values = json.loads(json.dumps(values))  # deep copy of plain data
    parsed = [parse_override(item) for item in overrides]
    for path, value in parsed:
        if path[0] == PER_RHO_KEY:
            merge(values, path, value)
    rest = [(path, value) for path, value in parsed if path[0] != PER_RHO_KEY]
    if PER_RHO_KEY in values:
        final = json.loads(json.dumps(values))
        for path, value in rest:
            merge(final, path, value)
        values = merged(values, per_rho_values(values.pop(PER_RHO_KEY), _longtail(final).get("rho", LongTailConfig.rho)))
    for path, value in rest:
        merge(values, path, value)
    missing = _required(values)
    if missing:
        them = "it" if len(missing) == 1 else "them"
        raise ConfigError(f"{', '.join(missing)} must be given: this config leaves {them} to you (add "
                          f"{' '.join(key + '=...' for key in missing)} to the command)")
    cfg = build_dataclass(RunConfig, values, "")
    _check(cfg)
    return cfg


#: the key naming a config file's bases: ``_base_: [../_base_/datasets/cifar10-lt.yaml, ...]``
BASE_KEY = "_base_"


def merged(below: dict, above: dict) -> dict:
    """``above`` over ``below``: mappings merged key by key (deeply), any other value replaced."""
    out = dict(below)
    for key, value in above.items():
        out[key] = merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def compose_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file's data with its ``_base_`` files (paths relative to the file, composed the same way)
    merged in order under it, later over earlier, the file's own keys last: shared recipes, datasets and
    models are written once under ``configs/_base_/``."""
    path = Path(path)
    here = path.resolve()
    if here in _chain:
        cycle = " -> ".join(p.name for p in (*_chain[_chain.index(here):], here))
        raise ConfigError(f"config file {path}: its _base_ files include themselves ({cycle})")
    data = read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
        raise ConfigError(f"config file {path}: {BASE_KEY} must be a list of YAML file paths relative to it, "
                          f"got {bases!r}")
    below: dict = {}
    for base in bases:
        if not (path.parent / base).is_file():
            raise ConfigError(f"config file {path}: {BASE_KEY} file {base!r} does not exist "
                              f"(looked for {path.parent / base})")
        below = merged(below, compose_yaml(path.parent / base, (*_chain, here)))
    return merged(below, data)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """A config file (its bases merged under it) plus ``key=value`` overrides; None: the defaults."""
    return build_config(compose_yaml(path) if path else {}, overrides)


def is_base(relative: Path) -> bool:
    """Whether a file under ``configs/`` is a base (``_base_/...``: part of configs, not a runnable one)."""
    return relative.parts[0].startswith("_")


def shipped_configs() -> list[str]:
    """The names of the shipped runnable configs (``table2/cifar10-lt_ce``), bases left out."""
    folder = Path(str(resources.files("tailshift") / "configs"))
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")
                  if not is_base(p.relative_to(folder)))


def config_path(name: str) -> Path:
    """A shipped config by name (``table1/fashion-lt_crt``) or any YAML path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    folder = Path(str(resources.files("tailshift") / "configs"))
    shipped = folder / f"{name}.yaml"
    if shipped.exists() and not is_base(shipped.relative_to(folder)):
        return shipped
    known = shipped_configs()
    raise ValueError(f"no config {name!r}: not a YAML file, and not a shipped config (known: {', '.join(known)})")


def save_config(cfg: RunConfig, path: Path) -> None:
    """``config.yaml``: the config as given (plain lists), loadable by ``load_config``."""
    atomic_write_text(path, yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False))
