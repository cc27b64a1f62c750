import sys

import pytest
from conftest import tiny_prepared

from tailshift.config import ConfigError, build_config
from tailshift.engine import train
from tailshift.resolve import resolve_run


def _cfg(tmp_path, name, *overrides):
    return build_config({"output": str(tmp_path / name), "device": "cpu", "progress": False},
                        ["train.epochs=2", "train.batch_size=32", "method.name=csa",
                         "method.params={warmup_epochs: 1, delta: 0.0}", *overrides])


def test_missing_tensorboard_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"^train.tensorboard=true needs the tensorboard package: "
                                          r"pip install tailshift\[tensorboard\]$"):
        resolve_run(_cfg(tmp_path, "run", "train.tensorboard=true"))


def test_csa_run_logs_curve_heads_bank_and_fused_images_without_changing_training(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tiny_prepared(channels=3)
    logged = train(_cfg(tmp_path, "logged", "train.tensorboard=true"), data)
    plain = train(_cfg(tmp_path, "plain"), data)
    strip = lambda curve: [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in curve]  # noqa: E731
    assert strip(logged["curve"]) == strip(plain["curve"]) and logged["heads"] == plain["heads"]

    events = EventAccumulator(str(tmp_path / "logged" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for head in ("balanced", "uniform", "ensemble"):
        assert {f"test/{head}/{g}" for g in ("all", "many", "med", "few")} <= set(tags["scalars"])
    assert {"train/loss", "train/lr", "train/fused", "train/bank_fill", "train/loss_balanced"} <= set(tags["scalars"])
    assert [e.value for e in events.Scalars("train/fused")] == [r["fused"] for r in plain["curve"]]
    assert events.Scalars("test/balanced/all")[-1].value == pytest.approx(plain["result"]["all"])
    assert tags["images"] == ["illustration"]  # CSA's context shift
    grid = events.Images("illustration")[-1]
    assert grid.width == 8 * 28 and grid.height == 8 * 28  # 8 shown; contexts, masks, context, balanced, 4 fused
