"""Values checked against the dataclass that declares them, so one checker serves every config and params class.

Allowed values are declared next to the fields:

    lr: float = bounded(0.1, gt=0)
    noise: float = bounded(0.25, ge=0, lt=1)
    loss: str = one_of("ce", LOSSES)          # a tuple of names or a Registry

A bound applies to a number, or to each element of a list of numbers; ``None`` (for an
optional field) is always allowed. ``declared`` finds a field's declaration in the class or
its bases, so a subclass that only changes a default keeps the base's rule. ``build_dataclass``
turns plain data (YAML) into an instance: unknown keys, types from the annotations and the
rules, each failing with a one-line ``ConfigError``. This module imports no other part of
tailshift: the config, the methods and the losses all build on it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, fields
from typing import Any, get_args, get_origin, get_type_hints

RULE = "tailshift.rule"


class ConfigError(ValueError):
    """A configuration value is invalid."""


@dataclass(frozen=True)
class Bounds:
    """low <= x (or low < x) and x <= high (or x < high); either side may be open-ended."""

    low: float | None = None
    high: float | None = None
    low_strict: bool = False
    high_strict: bool = False
    note: str = ""  # e.g. "0: off", appended in brackets

    def allows(self, x) -> bool:
        if self.low is not None and (x <= self.low if self.low_strict else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_strict else x <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            opening, closing = "(" if self.low_strict else "[", ")" if self.high_strict else "]"
            text = f"in {opening}{_num(self.low)}, {_num(self.high)}{closing}"
        elif self.low is not None:
            text = f"{'>' if self.low_strict else '>='} {_num(self.low)}"
        else:
            text = f"{'<' if self.high_strict else '<='} {_num(self.high)}"
        return f"{text} ({self.note})" if self.note else text

    def check(self, value, key: str) -> str | None:
        """The one-line complaint about ``value``, or None when it is allowed."""
        several = isinstance(value, (list, tuple))
        if all(v is None or self.allows(v) for v in (value if several else [value])):
            return None
        shown = list(value) if several else value
        return f"{key} must {'hold numbers' if several else 'be'} {self.describe()}, got {shown!r}"


@dataclass(frozen=True)
class OneOf:
    """A name from a fixed tuple, or from a registry (checked when used, so late registrations count)."""

    allowed: Any  # tuple[str, ...] or anything with ``names()`` and ``in``

    def names(self) -> list[str]:
        return list(self.allowed.names()) if hasattr(self.allowed, "names") else list(self.allowed)

    def check(self, value, key: str) -> str | None:
        if value is None or value in self.allowed:
            return None
        return f"{key} must be one of {', '.join(self.names())}; got {value!r}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def declare(default=MISSING, metadata: dict | None = None, default_factory=MISSING) -> Any:
    """A dataclass field carrying ``metadata``. ``default`` may itself be a field declared by
    another helper (``bounded(...)``, ``fingerprint.unhashed(...)``): its default and its
    declarations are kept, so the helpers compose."""
    if isinstance(default, dataclasses.Field):
        return dataclasses.field(default=default.default, default_factory=default.default_factory,
                                 metadata={**default.metadata, **(metadata or {})})
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bounded(default=MISSING, *, ge=None, gt=None, le=None, lt=None, note: str = "", default_factory=MISSING) -> Any:
    """A dataclass field whose number (or each number of its list) must lie within the bounds."""
    low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
    return declare(default, {RULE: Bounds(low, high, gt is not None, lt is not None, note)}, default_factory)


def one_of(default, allowed) -> Any:
    """A dataclass field whose value must be one of ``allowed`` (a tuple of names or a Registry)."""
    return declare(default, {RULE: OneOf(allowed)})


def declared(cls: type, name: str, key: str, missing: Any = None) -> Any:
    """What field ``name`` declares under ``key`` in ``cls`` or the nearest dataclass base that does."""
    for klass in cls.__mro__:
        field = getattr(klass, "__dataclass_fields__", {}).get(name)
        if field is not None and key in field.metadata:
            return field.metadata[key]
    return missing


def rule_of(cls: type, name: str):
    """The rule declared for field ``name`` by ``cls`` or the nearest dataclass base that has one."""
    return declared(cls, name, RULE)


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
    if origin in (list, tuple) or hint in (list, tuple):
        # a YAML list; held as a tuple where the field says so (``tuple[X, ...]``: frozen configs)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        items = [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if tuple in (origin, hint) else items
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


def build_params(owner: type, values: dict, key: str = "method.params"):
    """A ``params`` mapping (of a method, or a loss: ``key`` says where it was given) as an instance
    of the owner's ``Params`` dataclass: names, types (from the annotations) and the rules declared
    next to the fields, every default filled in."""
    if not isinstance(values, dict):
        raise ConfigError(f"{key} for {owner.__name__} must be a mapping, got {values!r}")
    names = [f.name for f in fields(owner.Params)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown {key}.{unknown[0]} for {owner.__name__}; known: {', '.join(names) or '(none)'}")
    return build_dataclass(owner.Params, values, key)
