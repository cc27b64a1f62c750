"""Fingerprint exemptions declared beside the fields: left out of the hash as declared, composed with
the validation rules, inherited like them, and applied to a method's params by their class."""
from dataclasses import dataclass, field

import pytest

from tailshift.fingerprint import added_later, differences, digest, shaped, unhashed
from tailshift.validation import ConfigError, bounded, build_dataclass, one_of


@dataclass(frozen=True)
class Inner:
    size: int = added_later(bounded(224, ge=1), neutral=224)
    workers: int = unhashed(bounded(4, ge=0))


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    params: dict = field(default_factory=dict)
    mode: str = added_later(one_of("new", ("new", "old")), neutral="old")
    output: str = unhashed("runs")
    seed: int = 0


@dataclass
class Params:
    joint: bool = added_later(False, neutral=False)
    q: float = bounded(1.0, ge=0)


@dataclass
class SubParams(Params):
    joint: bool = True  # a new default keeps the base's declaration


def test_unhashed_and_neutral_fields_are_left_out_and_the_rest_kept():
    values = {"inner": {"size": 224, "workers": 8}, "params": {"joint": False, "q": 1.0}, "mode": "new",
              "output": "x", "seed": 3, "retired": 1}
    assert shaped(values, Outer) == {"inner": {}, "params": {"joint": False, "q": 1.0}, "mode": "new", "seed": 3,
                                     "retired": 1}  # no Params class given: the params as they are
    assert shaped(values, Outer, {"params": Params})["params"] == {"q": 1.0}
    assert shaped({**values, "inner": {"size": 32}}, Outer)["inner"] == {"size": 32}
    assert "mode" not in shaped({**values, "mode": "old"}, Outer)
    assert shaped({"params": {"joint": False}}, Outer, {"params": SubParams}) == {"params": {}}
    assert digest(shaped(values, Outer)) == digest(shaped({**values, "output": "y", "inner": {"workers": 0}}, Outer))
    assert digest(shaped(values, Outer)) != digest(shaped({**values, "seed": 4}, Outer))


def test_declarations_compose_with_the_rules():
    with pytest.raises(ConfigError, match="inner.workers must be >= 0, got -1"):
        build_dataclass(Outer, {"inner": {"workers": -1}}, "")
    with pytest.raises(ConfigError, match="mode must be one of new, old; got 'other'"):
        build_dataclass(Outer, {"mode": "other"}, "")
    assert build_dataclass(Outer, {"inner": {"size": 32}}, "") == Outer(Inner(size=32))


def test_differences_name_each_key_with_both_values():
    old = shaped({"inner": {"size": 224}, "seed": 0, "output": "a"}, Outer)
    new = shaped({"inner": {"size": 32}, "seed": 0, "output": "b"}, Outer)
    assert differences(old, new) == ["inner.size: (unset) -> 32"]
