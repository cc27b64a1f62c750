"""Host loading (split on the host, batches decoded by loader workers): the per-image recipes, feeds
equal to the device pipeline, runs on generated JPEGs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import write_imagenet_lt
from PIL import Image

from tailshift.config import build_config
from tailshift.data.arrays import ArrayDataset, DataError
from tailshift.data.lists import FileDataset
from tailshift.data.pipeline import DeviceArrays
from tailshift.data.host_loader import ArrayImages, FileImages, HostFeed, choose_storage, make_feeds
from tailshift.data.transforms import crop_flip, eval_image, resized_crop_box, train_image
from tailshift.distributed import World
from tailshift.engine import Trainer, train


def test_resized_crop_boxes_respect_scale_ratio_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = resized_crop_box(120, 80, rng)
        assert 0 <= left and left + w <= 120 and 0 <= top and top + h <= 80
        assert 0.08 * 9600 * 0.9 <= w * h <= 9600 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # a strip no crop of ratio 3/4..4/3 and share >= 8 % fits: the central crop, ratio clamped to 4/3
    assert resized_crop_box(400, 10, np.random.default_rng(0)) == (193, 0, 13, 10)


def test_eval_recipe_resizes_the_shorter_side_and_crops_the_centre():
    pixels = np.random.default_rng(0).integers(0, 255, size=(36, 50, 3), dtype=np.uint8)
    out = eval_image(Image.fromarray(pixels), 36, 32)  # shorter side already 36: no resampling
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels[2:34, 9:41].transpose(2, 0, 1))
    assert eval_image(Image.fromarray(pixels), 72, 64).shape == (3, 64, 64)


def test_train_recipe_is_a_function_of_the_generator():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(40, 48, 3), dtype=np.uint8))
    a = train_image(img, 32, 0.4, np.random.default_rng([1, 2]))
    b = train_image(img, 32, 0.4, np.random.default_rng([1, 2]))
    c = train_image(img, 32, 0.4, np.random.default_rng([1, 3]))
    assert a.shape == (3, 32, 32) and np.array_equal(a, b) and not np.array_equal(a, c)
    # without jitter the pixels are the crop's: a full-image "crop" of a flat image keeps its colour
    flat = Image.new("RGB", (40, 48), (10, 120, 230))
    assert (train_image(flat, 16, 0.0, np.random.default_rng(0)) == np.array([10, 120, 230])[:, None, None]).all()


def test_numpy_crop_flip_matches_the_device_recipe():
    image = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)
    seen_flips = set()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out = crop_flip(image, 2, rng)
        rng = np.random.default_rng(seed)
        oy, ox = rng.integers(0, 5, size=2)
        flip = rng.random() < 0.5
        padded = np.pad(image, ((0, 0), (2, 2), (2, 2)))
        expected = padded[:, oy:oy + 5, ox:ox + 6]
        np.testing.assert_array_equal(out, expected[:, :, ::-1] if flip else expected)
        seen_flips.add(bool(flip))
    assert seen_flips == {True, False}


def test_host_feed_of_arrays_equals_the_device_arrays():
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.integers(0, 255, size=(23, 3, 8, 8), dtype=np.uint8), rng.integers(0, 4, 23))
    device = DeviceArrays(data, "cpu", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.3))
    host = HostFeed(ArrayImages(data), torch.device("cpu"), (0.5, 0.4, 0.3), (0.2, 0.2, 0.3), workers=0)
    for a, b in zip(device.iterate(10, 3, 21), host.iterate(10, 3, 21), strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.index, b.index)
    indices = {"u": torch.from_numpy(rng.permutation(23)), "b": torch.from_numpy(rng.integers(0, 23, 23))}
    whole = [s for s in host.epoch(indices, 3, 10, seed=5)]
    halves = [[s for s in host.epoch(indices, 3, 10, seed=5, world=World(r, 2))] for r in range(2)]
    for step, (one, *two) in enumerate(zip(whole, *halves)):
        for name in indices:
            joined = torch.cat([part[name].x for part in two])
            assert torch.equal(joined, one[name].x)
            assert torch.equal(one[name].index, indices[name][10 * step: 10 * step + 10])


def test_host_loaded_crop_flip_is_the_same_whatever_the_split(tmp_path):
    rng = np.random.default_rng(1)
    data = ArrayDataset(rng.integers(0, 255, size=(30, 1, 6, 6), dtype=np.uint8), rng.integers(0, 3, 30))
    feed = HostFeed(ArrayImages(data, "crop_flip", 2), torch.device("cpu"), augmented=True, workers=0)
    indices = {"main": torch.arange(30)}
    one = torch.cat([b["main"].x for b in feed.epoch(indices, 3, 10, seed=7)])
    two = [torch.cat([b["main"].x for b in feed.epoch(indices, 3, 10, seed=7, world=World(r, 2))]) for r in (0, 1)]
    assert torch.equal(torch.cat([two[0][:5], two[1][:5], two[0][5:10], two[1][5:10], two[0][10:], two[1][10:]]), one)
    assert not torch.equal(one, torch.cat([b["main"].x for b in feed.epoch(indices, 3, 10, seed=8)]))


def test_a_corrupt_jpeg_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    data = FileDataset(str(tmp_path), np.array([b"bad.jpg"]), np.array([0]), 1)
    feed = HostFeed(FileImages(data, "none", 8, 8, 0.0), torch.device("cpu"), workers=1)
    with pytest.raises(DataError, match="cannot decode image .*bad.jpg") as err:
        next(feed.iterate(1))
    assert "\n" not in str(err.value)


def test_storage_choice_and_recipes_per_kind_of_data(tmp_path):
    arrays = ArrayDataset(np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 1]))
    files = FileDataset(str(tmp_path), np.array([b"a.jpg"]), np.array([0]), 1)
    cpu = torch.device("cpu")
    assert choose_storage("auto", arrays, arrays, cpu) == "device"
    assert choose_storage("auto", files, files, cpu) == "host"
    with pytest.raises(DataError, match="data.storage=device needs a dataset decoded in memory"):
        choose_storage("device", files, files, cpu)
    cfg = build_config({}, ["data.augment=resized_crop"]).data
    with pytest.raises(DataError, match="data.augment=resized_crop does not apply to in-memory arrays"):
        make_feeds(arrays, arrays, cpu, cfg)
    host_cfg = build_config({}, ["data.storage=host", "data.augment=crop_flip", "data.workers=0"]).data
    assert [f.storage for f in make_feeds(arrays, arrays, cpu, host_cfg)] == ["host", "host"]


def imagenet_cfg(root, out, *overrides):
    return build_config(
        {"data": {"dataset": "imagenet-lt", "root": str(root), "class_order": "count", "longtail": {"profile": "none"},
                  "groups": "count", "augment": "resized_crop", "crop_size": 32, "resize_size": 36, "workers": 2,
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
         "model": {"name": "lenet2d"},
         "train": {"epochs": 3, "batch_size": 16, "test_batch_size": 20,
                   "optim": {"lr": 0.02, "momentum": 0.9, "schedule": "cosine"}},
         "output": str(out), "progress": False, "device": "cpu"}, list(overrides))


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """A few hundred JPEGs laid out like ImageNet-LT (6 classes, 100 train, 24 test)."""
    return write_imagenet_lt(tmp_path_factory.mktemp("imagenet-lt"))


def test_host_loaded_run_resumes_exactly_whatever_the_workers(jpegs, tmp_path, monkeypatch):
    resumed = tmp_path / "resumed"
    write = Trainer._write_checkpoint

    def keep_epoch_two(self, state, *args):  # a copy of the full run's folder after 2 of 3 epochs
        write(self, state, *args)
        if state.epoch == 2:
            shutil.copytree(self.out, resumed)

    monkeypatch.setattr(Trainer, "_write_checkpoint", keep_epoch_two)
    full = train(imagenet_cfg(jpegs, tmp_path / "full", "method.name=cbrs"))  # 2 workers
    monkeypatch.undo()
    assert full["storage"] == "host" and full["curve"][-1]["loss"] < full["curve"][0]["loss"]
    again = train(imagenet_cfg(jpegs, resumed, "method.name=cbrs", "data.workers=0"))  # its last epoch, in-process
    assert again["heads"] == full["heads"] and again["curve"][:2] == full["curve"][:2]
    for key, value in torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["method"].items():
        assert torch.equal(torch.load(resumed / "checkpoint.pt", weights_only=True)["method"][key], value)


def test_csa_trains_on_host_loaded_images(jpegs, tmp_path):
    metrics = train(imagenet_cfg(jpegs, tmp_path / "csa", "method.name=csa", "train.epochs=2",
                                 "method.params={warmup_epochs: 1, delta: 0.0}"))
    curve = json.loads((tmp_path / "csa" / "curve.json").read_text())
    assert curve[1]["fused"] > 0 and set(metrics["heads"]) == {"balanced", "uniform", "ensemble"}
