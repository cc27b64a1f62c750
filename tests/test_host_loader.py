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
from tailshift.data import transforms
from tailshift.data.color import color_jitter
from tailshift.data.transforms import (crop_flip, draft_reduction, eval_image, jitter_draws, open_train_image,
                                       pillow_color_jitter, resized_crop_box, train_crop)
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


def train_recipe(path, size, jitter, rng):
    img, box = open_train_image(str(path), size, rng)
    img, draws = train_crop(img, box, size, jitter, rng)
    return np.asarray(img if draws is None else pillow_color_jitter(img, draws)).transpose(2, 0, 1)


def test_train_recipe_is_a_function_of_the_generator(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(40, 48, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    a = train_recipe(tmp_path / "a.png", 32, 0.4, np.random.default_rng([1, 2]))
    b = train_recipe(tmp_path / "a.png", 32, 0.4, np.random.default_rng([1, 2]))
    c = train_recipe(tmp_path / "a.png", 32, 0.4, np.random.default_rng([1, 3]))
    assert a.shape == (3, 32, 32) and np.array_equal(a, b) and not np.array_equal(a, c)
    # without jitter the pixels are the crop's: a full-image "crop" of a flat image keeps its colour
    Image.new("RGB", (40, 48), (10, 120, 230)).save(tmp_path / "flat.png")
    flat = train_recipe(tmp_path / "flat.png", 16, 0.0, np.random.default_rng(0))
    assert (flat == np.array([10, 120, 230])[:, None, None]).all()


def pillow_enhance(pixels, draws):
    """ColorJitter as torchvision runs it on a PIL image: ImageEnhance, one factor each, in the drawn order."""
    from PIL import ImageEnhance
    img = Image.fromarray(pixels)
    for k in draws[3:].astype(int):
        img = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[k](img).enhance(float(draws[k]))
    return np.asarray(img)


def test_device_colour_jitter_equals_pillows_pixel_for_pixel():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, 20, 24, 3), dtype=np.uint8)
    pixels[:12] = rng.integers(110, 140, (12, 20, 24, 3))  # low contrast: the contrast mean matters
    draws = np.stack([jitter_draws(0.9, np.random.default_rng(i)) for i in range(48)])  # factors up to 1.9
    assert len({tuple(d[3:]) for d in draws}) == 6  # every order of the three enhancements
    out = color_jitter(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(draws))
    expected = np.stack([pillow_enhance(p, d) for p, d in zip(pixels, draws)])
    np.testing.assert_array_equal(out.permute(0, 2, 3, 1).numpy(), expected)
    # one factor of one image moved: that image, and only it, changes
    draws[5, 2] += 0.3
    moved = color_jitter(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(draws))
    assert [i for i in range(48) if not torch.equal(moved[i], out[i])] == [5]


def test_jitter_on_the_device_gives_the_batches_of_jitter_in_the_workers(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, size=(30, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    data = FileDataset(str(tmp_path), np.array([f"{i}.png".encode() for i in range(12)]), np.arange(12) % 3, 3)
    batches = []
    for on_device in (False, True):
        images = FileImages(data, "resized_crop", 16, 18, 0.4, jitter_on_device=on_device)
        assert images.draws == (6 if on_device else 0)
        feed = HostFeed(images, torch.device("cpu"), augmented=True, workers=0)
        batches.append(torch.cat([b["main"].x for b in feed.epoch({"main": torch.arange(12)}, 3, 4, seed=3)]))
    assert torch.equal(*batches)


def test_a_large_crop_decodes_at_a_reduced_dct_scale_with_the_same_geometry(tmp_path, monkeypatch):
    yy, xx = np.mgrid[0:900, 0:1200]
    scene = np.stack([xx * 255 // 1200, yy * 255 // 900, (xx + yy) * 255 // 2100], -1).astype(np.uint8)
    Image.fromarray(scene).save(tmp_path / "big.jpg", quality=92)
    assert draft_reduction(1000, 700, 224) == 2 and draft_reduction(1000, 447, 224) == 1
    assert draft_reduction(900, 900, 100) == 8
    decoded_sizes = []  # the size each image is decoded at
    real = transforms.to_8bit
    monkeypatch.setattr(transforms, "to_8bit", lambda img, mode: decoded_sizes.append(img.size) or real(img, mode))
    reduced, full = [], []
    for seed in range(30):
        img, box = open_train_image(str(tmp_path / "big.jpg"), 112, np.random.default_rng(seed))
        left, top, w, h = resized_crop_box(1200, 900, np.random.default_rng(seed))
        k = draft_reduction(w, h, 112)
        assert img.size == (-(-1200 // k), -(-900 // k)) == decoded_sizes[-1]
        np.testing.assert_allclose(box, (left / k, top / k, (left + w) / k, (top + h) / k), rtol=0.01, atol=0.5)
        if k > 1:
            reduced.append(np.asarray(img.resize((112, 112), Image.BILINEAR, box=box), dtype=np.float64))
            with Image.open(tmp_path / "big.jpg") as whole:
                full.append(np.asarray(whole.convert("RGB").resize((112, 112), Image.BILINEAR,
                                                                   box=(left, top, left + w, top + h)), np.float64))
    assert len(reduced) >= 5
    # the same crops' colours: per-channel means within a grey level, pixels within a few
    reduced, full = np.stack(reduced), np.stack(full)
    assert np.abs(reduced.mean(axis=(1, 2)) - full.mean(axis=(1, 2))).max() < 1.0
    assert np.abs(reduced - full).mean() < 2.0


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
    with pytest.raises(DataError, match="data.augment=resized_crop resizes images on the host"):
        make_feeds(arrays, arrays, cpu, build_config({}, ["data.augment=resized_crop", "data.storage=device"]).data)
    with pytest.raises(DataError, match="data.tte=fivecrop .* needs image files or data.augment=resized_crop"):
        make_feeds(arrays, arrays, cpu, build_config({}, ["data.tte=fivecrop"]).data)
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
