"""What a run's fingerprint hashes, declared next to the fields that are exempt.

    workers: int = unhashed(bounded(4, ge=0))                          # how, never what, is trained
    palette: str = added_later(one_of("tab10", PALETTES), neutral="deep")

An ``unhashed`` field changes where or how a run is written or shown, never the trained model,
and is left out of the hash. An ``added_later`` field is an option added after runs were
recorded: at ``neutral`` (the value that reproduces the older behaviour) it is left out, so
those runs' checkpoints still match their configs. A method param added later declares it on
its ``Params`` field the same way. The helpers compose with ``validation.bounded`` / ``one_of``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import MISSING
from typing import Any, Mapping, get_type_hints

from .validation import declare, declared

UNHASHED = "tailshift.unhashed"
NEUTRAL = "tailshift.neutral"
_ABSENT = object()


def unhashed(default=MISSING) -> Any:
    """A dataclass field that never enters the fingerprint."""
    return declare(default, {UNHASHED: True})


def added_later(default=MISSING, *, neutral) -> Any:
    """A dataclass field left out of the fingerprint while it holds ``neutral``."""
    return declare(default, {NEUTRAL: neutral})


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def shaped(values: dict, cls: type, described: Mapping[str, type] = {}, prefix: str = "") -> dict:
    """The part of ``values`` (plain data of a ``cls`` instance, possibly from an older version)
    that the fingerprint hashes. ``described``: dotted key -> the dataclass whose declarations
    cover a mapping-typed field there (a method's ``Params`` for ``method.params``). Keys no
    field declares (options since removed) are kept."""
    known = {f.name for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    out = {}
    for key, value in _plain(values).items():
        if key in known:
            if declared(cls, key, UNHASHED, False):
                continue
            neutral = declared(cls, key, NEUTRAL, _ABSENT)
            if neutral is not _ABSENT and value == _plain(neutral):
                continue
            inner = hints[key] if dataclasses.is_dataclass(hints[key]) else described.get(f"{prefix}{key}")
            if inner is not None and isinstance(value, dict):
                value = shaped(value, inner, described, f"{prefix}{key}.")
        out[key] = value
    return out


def digest(values: dict) -> str:
    """16 hex digits of SHA-256 over ``values`` as canonical JSON."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):  # an empty mapping (no method params) flattens to nothing
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for each key of two ``shaped`` dicts that differs (absent: ``(unset)``)."""
    a, b = _flatten(old), _flatten(new)
    shown = lambda d, key: repr(d[key]) if key in d else "(unset)"  # noqa: E731
    return [f"{key}: {shown(a, key)} -> {shown(b, key)}"
            for key in sorted(set(a) | set(b)) if shown(a, key) != shown(b, key)]
