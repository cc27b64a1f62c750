"""Allowed values declared next to dataclass fields, so one checker serves every config and params class.

    lr: float = bounded(0.1, gt=0)
    noise: float = bounded(0.25, ge=0, lt=1)
    loss: str = one_of("ce", LOSSES)          # a tuple of names or a Registry

A bound applies to a number, or to each element of a list of numbers; ``None`` (for an
optional field) is always allowed. ``rule_of`` finds a field's rule in the class or its
bases, so a subclass that only changes a default keeps the base's rule.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any

RULE = "tailshift.rule"


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
        values = value if isinstance(value, list) else [value]
        if all(v is None or self.allows(v) for v in values):
            return None
        return f"{key} must {'hold numbers' if isinstance(value, list) else 'be'} {self.describe()}, got {value!r}"


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


def _field(default, default_factory, rule) -> Any:
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={RULE: rule})
    return dataclasses.field(default=default, metadata={RULE: rule})


def bounded(default=MISSING, *, ge=None, gt=None, le=None, lt=None, note: str = "", default_factory=MISSING) -> Any:
    """A dataclass field whose number (or each number of its list) must lie within the bounds."""
    low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
    return _field(default, default_factory, Bounds(low, high, gt is not None, lt is not None, note))


def one_of(default, allowed) -> Any:
    """A dataclass field whose value must be one of ``allowed`` (a tuple of names or a Registry)."""
    return _field(default, MISSING, OneOf(allowed))


def rule_of(cls: type, name: str):
    """The rule declared for field ``name`` by ``cls`` or the nearest dataclass base that has one."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and RULE in declared.metadata:
            return declared.metadata[RULE]
    return None
