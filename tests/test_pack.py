"""``tailshift pack``: a list dataset's images decoded once into a memory-mapped pack, read by the host
loader instead of the files (test batches equal to the files'), and every way a pack can be wrong refused
in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_imagenet_lt
from test_host_loader import imagenet_cfg

from tailshift.cli import main
from tailshift.data.arrays import DataError
from tailshift.data.build import prepare_data
from tailshift.data.host_loader import make_feeds
from tailshift.data.pack import Pack, shorter_side_resized
from tailshift.engine import train


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A tiny ImageNet-LT (images 40 x 48 and 52 x 36) and its pack at shorter side 36."""
    root = write_imagenet_lt(tmp_path_factory.mktemp("jpegs"))
    out = tmp_path_factory.mktemp("packs") / "pack"
    assert main(["pack", str(data_yaml(root, out.parent)), "--output", str(out), "--workers", "2"]) == 0
    return root, out


def data_yaml(root, folder):
    """A config file whose data is ``root``'s list dataset, as ``imagenet_cfg`` reads it."""
    path = folder / "pack.yaml"
    path.write_text(f"data: {{dataset: imagenet-lt, root: '{root}', class_order: count, longtail: {{profile: none}}, "
                    "groups: count, crop_size: 32, resize_size: 36}\n")
    return path


def test_the_pack_holds_every_image_resized_as_the_test_recipe_resizes(packed):
    root, out = packed
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest["images"] == 100 + 24 and manifest["short_side"] == 36
    pack = Pack(out)
    from PIL import Image

    for rel in ("train/n00000000/n00000000_0.JPEG", "val/n00000005/ILSVRC2012_val_00000123.JPEG"):
        with Image.open(root / rel) as img:
            expected = np.asarray(shorter_side_resized(img.convert("RGB"), 36))
        got = np.asarray(pack.image(pack.row_of[rel.encode()]))
        assert min(got.shape[:2]) == 36
        np.testing.assert_array_equal(got, expected)


def test_training_reads_the_pack_and_its_test_batches_equal_the_files(packed, tmp_path):
    root, out = packed
    from_files = imagenet_cfg(root, tmp_path / "files", "data.workers=0")
    from_pack = imagenet_cfg(root, tmp_path / "pack", "data.workers=0", f"data.pack={out}")
    data = prepare_data(from_files.data)
    batches = []
    for cfg in (from_files, from_pack):
        train_feed, test_feed = make_feeds(data.train, data.test, torch.device("cpu"), cfg.data)
        batches.append((torch.cat([b.x for b in test_feed.iterate(10)]),
                        torch.cat([b["main"].x for b in train_feed.epoch({"main": torch.arange(20)}, 2, 10, seed=1)])))
    (test_files, train_files), (test_pack, train_pack) = batches
    assert torch.equal(test_files, test_pack)  # packed at data.resize_size: the test recipe's pixels exactly
    assert train_pack.shape == train_files.shape and not torch.equal(train_pack, train_files)
    metrics = train(from_pack)
    assert metrics["storage"] == "host" and len(metrics["curve"]) == 3
    assert metrics["curve"][-1]["loss"] < metrics["curve"][0]["loss"]


@pytest.mark.parametrize("damage, message", [
    ("manifest", r"is not a tailshift pack \(no pack.json\)"),
    ("truncate", r"is damaged or truncated: pixels.u8 has \d+ bytes"),
    ("format", r"pack.json is not a tailshift-pack version 1 manifest"),
])
def test_a_missing_or_damaged_pack_is_one_line(packed, tmp_path, damage, message):
    import shutil

    _, out = packed
    copy = shutil.copytree(out, tmp_path / "copy")
    if damage == "manifest":
        (copy / "pack.json").unlink()
    elif damage == "truncate":
        with open(copy / "pixels.u8", "r+b") as f:
            f.truncate(1000)
    else:
        (copy / "pack.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(DataError, match=message) as err:
        Pack(copy)
    assert "\n" not in str(err.value)


def test_a_pack_of_other_data_or_too_small_is_refused(packed, tmp_path):
    root, out = packed
    other = write_imagenet_lt(tmp_path / "other", counts=(3, 2))
    other_out = tmp_path / "other_pack"
    assert main(["pack", str(data_yaml(other, tmp_path)), "--output", str(other_out), "--workers", "1",
                 "--short-side", "40"]) == 0
    data = prepare_data(imagenet_cfg(root, tmp_path / "x").data)
    with pytest.raises(DataError, match=r"holds no image 'train/n0+\d/n0+\d_\d+.JPEG': it was packed from another"):
        Pack(other_out).rows(data.train, 36)
    with pytest.raises(DataError, match=r"packed at shorter side 36 < data.resize_size=48; pack again with "
                                        r"--short-side 48 or more"):
        Pack(out).rows(data.train, 48)


def test_a_pack_for_data_held_in_memory_is_refused(tmp_path):
    from tailshift.config import build_config
    from tailshift.data.arrays import ArrayDataset

    arrays = ArrayDataset(np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 1]))
    cfg = build_config({}, [f"data.pack={tmp_path}"]).data
    with pytest.raises(DataError, match=r"data.pack=.* applies to datasets of image files; fashion-mnist is decoded"):
        make_feeds(arrays, arrays, torch.device("cpu"), cfg)
