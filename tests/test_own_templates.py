"""The shipped templates for a user's own data (``own/*``): the data path (and a pretrained model's weights)
must be given, and each trains end to end on a tiny image folder of mixed image sizes, or a list file."""
from __future__ import annotations

import json
import math

import pytest
from conftest import import_real, write_imagenet_lt

from tailshift import cli
from tailshift.config import load_config, config_path
from tailshift.validation import ConfigError

CNN = ["own/cnn_ce", "own/cnn_cbrs", "own/cnn_crt", "own/cnn_csa"]
VIT = ["own/lift", "own/lift-csa"]
#: what each template's run reports with, and its method
REPORTS = {"own/cnn_ce": ("ce", "main"), "own/cnn_cbrs": ("cbrs", "main"), "own/cnn_crt": ("crt", "crt"),
           "own/cnn_csa": ("csa", "balanced"), "own/lift": ("la", "main"), "own/lift-csa": ("csa", "balanced")}
#: a tiny run: 32-pixel crops, two steps of 16 (and, for cRT, one epoch of re-training)
TINY = ["data.crop_size=32", "data.resize_size=36", "data.workers=0", "train.epochs=1", "train.batch_size=16",
        "train.test_batch_size=32", "progress=false", "device=cpu"]
SHORTER = {"own/cnn_crt": ["method.params.retrain_epochs=1"],
           "own/cnn_csa": ["method.params.warmup_epochs=0", "method.params.delta=0.0"],
           "own/lift-csa": ["method.params.warmup_epochs=0", "method.params.delta=0.0"]}
#: a tiny random ViT in place of the pretrained CLIP ViT-B/16 (nothing is downloaded)
TINY_VIT = ["model.name=timm:vit_tiny_patch16_224", "model.pretrained=none", "data.tte_resize_size=36"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """train/<class>/ and val/<class>/ folders of JPEGs of two sizes (32 training images, 4 classes), and lists."""
    return write_imagenet_lt(tmp_path_factory.mktemp("own"), counts=(14, 9, 6, 3), test_per_class=2)


@pytest.mark.parametrize("name", CNN + VIT)
def test_a_template_says_in_one_line_what_the_user_must_give(name):
    needed = "data.root" if name in CNN else "data.root, model.pretrained"
    with pytest.raises(ConfigError) as err:
        load_config(config_path(name))
    assert str(err.value) == (f"{needed} must be given: this config leaves {'it' if name in CNN else 'them'} to "
                              f"you (add {' '.join(key + '=...' for key in needed.split(', '))} to the command)")
    if name in VIT:
        with pytest.raises(ConfigError, match=r"^model.pretrained must be given"):
            load_config(config_path(name), ["data.root=/data"])


@pytest.mark.parametrize("name", CNN + VIT)
def test_each_template_trains_end_to_end_on_an_image_folder(name, images, tmp_path, capsys):
    if name in VIT:
        import_real("timm")
    out = tmp_path / "run"
    extra = (TINY_VIT if name in VIT else []) + SHORTER.get(name, [])
    assert cli.main(["train", name, f"data.root={images}", *TINY, *extra, f"output={out}"]) == 0
    method, head = REPORTS[name]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"{method} ({head} head): All")
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = metrics["config"]
    assert cfg["method"]["name"] == method and metrics["default_head"] == head
    assert metrics["data_source"]["path"] == f"{images} (class folders)"
    assert metrics["class_counts"] == [14, 9, 6, 3]
    assert metrics["groups"] == {"many": [], "med": [], "few": [0, 1, 2, 3]}  # by count: all under 20 images
    assert (cfg["data"]["groups"], cfg["data"]["augment"], cfg["data"]["longtail"]["profile"]) == \
        ("count", "resized_crop", "none")
    assert all(math.isfinite(r["loss"]) for r in metrics["curve"])
    if name in VIT:  # only AdaptFormer's modules and the heads train
        assert cfg["model"]["tune"] == "adaptformer"
        heads = (2 if method == "csa" else 1) * 192 * 4  # LIFT's cosine heads: no bias
        adapters = 12 * (2 * 192 + 192 * 1 + 1 + 1 * 192 + 192 + 1)  # per block: LayerNorm, down, up, scale
        assert metrics["trainable_parameters"] == {"train": adapters + heads}
    if method == "csa":
        assert metrics["curve"][0]["fused"] > 0


def test_a_template_reads_a_list_file_instead(images, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "own/cnn_ce", "data.dataset=filelist", f"data.root={images}",
                     f"data.train_list={images / 'ImageNet_LT_train.txt'}",
                     f"data.test_list={images / 'ImageNet_LT_test.txt'}", *TINY, f"output={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_counts"] == [14, 9, 6, 3] and "lists" in metrics["data_source"]["path"]


def test_a_csa_template_whose_balanced_head_never_trained_says_so_last_with_the_fix(images, tmp_path, capsys):
    assert cli.main(["train", "own/cnn_csa", f"data.root={images}", *TINY, "method.params.warmup_epochs=0",
                     "method.params.delta=1.0", f"output={tmp_path / 'run'}"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "tailshift: no step gave the balanced, ensemble heads a loss, so their scores are a random head's; "
        "no training image reached the uniform head's confidence method.params.delta=1.0, so no context "
        "was fused: lower it (e.g. method.params.delta=0.5) or train longer")
