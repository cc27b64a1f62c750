"""The pieces of the foundation miniature (issue 25): ``model.timm_args`` shapes a timm model, a tailshift run
of a timm model is a ``model.pretrained`` file, and ``benchmarks/foundation_miniature.py`` runs end to end on
its tiny setting (pretrain, then every tune mode and method fine-tuned), re-reading finished runs."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_real

from tailshift import cli
from tailshift.config import build_config
from tailshift.models import create_model
from tailshift.validation import ConfigError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import foundation_miniature  # noqa: E402

VIT = "timm:vit_tiny_patch16_224"
SMALL = {"patch_size": 4, "embed_dim": 24, "depth": 2, "num_heads": 2}


@pytest.fixture
def timm():
    return import_real("timm")


def test_timm_args_shape_the_vision_transformer(timm):
    backbone = create_model(VIT, image_size=16, timm_args=SMALL, in_channels=1)
    assert len(backbone.net.blocks) == 2 and backbone.out_dim == 24 and backbone.grid == (4, 4)
    assert backbone(torch.rand(3, 1, 16, 16)).shape == (3, 24)


def test_bad_timm_args_are_refused_in_one_line(timm):
    cfg = build_config({}, ["model.name=timm:vit_tiny_patch16_224", "model.timm_args={depth: 2}"])
    assert cfg.model.timm_args == {"depth": 2}
    for overrides, message in (
            (["model.name=resnet32", "model.timm_args={depth: 2}"],
             "model.timm_args applies to timm:NAME models; model.name=resnet32 is not one"),
            ([f"model.name={VIT}", "model.timm_args={img_size: 64}"], "model.timm_args.img_size is set by tailshift"),
            ([f"model.name={VIT}", "model.timm_args={depth: {a: 1}}"],
             "model.timm_args.depth must be a number, string, true/false or a list of them, got {'a': 1}"),
            ([f"model.name={VIT}", "model.timm_args=[4]"], "model.timm_args must be a mapping, got [4]")):
        with pytest.raises(ConfigError, match="^" + message.replace("{", r"\{").replace("}", r"\}").replace("[", r"\[")
                           .replace("]", r"\]")):
            build_config({}, overrides)
    with pytest.raises(ValueError, match=r"^model.timm_args.depthh is not an argument of timm:vit_tiny_patch16_224 "
                                         r"\(.*unexpected keyword argument 'depthh'\)$"):
        create_model(VIT, image_size=16, timm_args={"depthh": 2})


def _write_npz(path, classes=3, per_class=8, size=16):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), per_class)
    x = rng.integers(0, 255, (len(y), size, size, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[::2], y_test=y[::2])


def test_a_runs_checkpoint_is_a_pretrained_file_for_a_timm_model(timm, tmp_path):
    _write_npz(tmp_path / "data.npz")
    common = ["device=cpu", "progress=false", "data.dataset=npz", f"data.root={tmp_path / 'data.npz'}",
              "data.longtail.profile=none", "data.groups=count", "train.epochs=1", "train.batch_size=8",
              f"model.name={VIT}", "model.timm_args={patch_size: 4, embed_dim: 24, depth: 2, num_heads: 2}"]
    (tmp_path / "run.yaml").write_text("method: {name: ce}\n")
    assert cli.main(["train", str(tmp_path / "run.yaml"), *common, f"output={tmp_path / 'pre'}"]) == 0
    saved = torch.load(tmp_path / "pre" / "checkpoint.pt", weights_only=True)["method"]
    loaded = create_model(VIT, pretrained=str(tmp_path / "pre" / "checkpoint.pt"), image_size=16, timm_args=SMALL,
                          in_channels=3).state_dict()
    assert loaded.keys() == {key[len("backbone."):] for key in saved if key.startswith("backbone.")}
    assert all(torch.equal(saved[f"backbone.{key}"], value) for key, value in loaded.items())
    with pytest.raises(ValueError, match=r"do not fit VisionTransformer: .*wrong shape"):  # another architecture
        create_model(VIT, pretrained=str(tmp_path / "pre" / "checkpoint.pt"), image_size=16, in_channels=3,
                     timm_args={**SMALL, "embed_dim": 32})


def _write_cifar_like(path):
    """Ten classes of 32 x 32 colour images, laid out as the CIFAR-10 npz is."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 30)
    x = rng.integers(0, 255, (len(y), 32, 32, 3), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[::3], y_test=y[::3])


def test_the_study_runs_on_its_tiny_setting_and_resumes(timm, tmp_path, monkeypatch):
    _write_cifar_like(tmp_path / "cifar.npz")
    argv = ["--tiny", "--in-process", "--seeds", "0", "--runs", str(tmp_path / "runs"),
            "--cifar10", str(tmp_path / "cifar.npz"), "--output", str(tmp_path / "out")]
    report = foundation_miniature.main(argv)
    rows = {(r["tune"], r["method"]): r for r in report["rows"]}
    assert sorted(rows) == sorted((t, m) for t in foundation_miniature.TUNES for m in foundation_miniature.METHODS)
    assert rows[("linear", "ce")]["trainable_parameters"] == 16 * 5 + 5  # the head alone
    assert rows[("linear", "ce")]["trainable_parameters"] < rows[("adaptformer", "ce")]["trainable_parameters"] \
        < rows[("full", "ce")]["trainable_parameters"]
    assert report["pretrain"]["finetune_counts"] == [20, 11, 6, 3, 2]
    assert len(report["commands"]) == 1 + 9 and all(c.startswith("tailshift train ") for c in report["commands"])
    saved = json.loads((tmp_path / "out" / "foundation_miniature.json").read_text())
    assert saved["rows"] == report["rows"]
    assert "| adaptformer | csa |" in (tmp_path / "out" / "README.md").read_text()

    def no_training(argv):
        raise AssertionError(f"a finished run was trained again: {argv}")

    monkeypatch.setattr(cli, "main", no_training)
    again = foundation_miniature.main(argv)
    assert again["rows"] == report["rows"]
