"""``data.decode=gpu``: workers only read files and draw; the device decodes, crops, resizes, flips and
jitters. Run here through its CPU fallback: the draws equal the host recipe's, the geometry is the
drawn crop, JPEGs shipped encoded give the batch decoded ones do, and a run trains end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_imagenet_lt
from PIL import Image
from test_host_loader import imagenet_cfg

from tailshift.data.arrays import ArrayDataset, DataError
from tailshift.data.color import color_jitter
from tailshift.data.device_decode import DeviceDecodedImages, gpu_jpeg_decoder
from tailshift.data.host_loader import FileImages, make_feeds
from tailshift.data.lists import FileDataset
from tailshift.data.transforms import resized_crop_box
from tailshift.engine import train


def files(tmp_path, suffix, n=6, size=(60, 40)):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    names = []
    for i in range(n):
        pixels = np.stack([xx * 4 % 256, yy * 6 % 256, (xx + yy + 40 * i) % 256], -1).astype(np.uint8)
        pixels[5:15, 5:25] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(tmp_path / f"{i}{suffix}", quality=95)
        names.append(f"{i}{suffix}".encode())
    return FileDataset(str(tmp_path), np.array(names), np.arange(n) % 2, 2)


def batch(images, n, seed=0):
    items = [images.image(i, np.random.default_rng([seed, i])) for i in range(n)]
    return items, images.finish(images.collate(items), torch.device("cpu"))


def test_the_device_cuts_the_drawn_crop_and_flips_it(tmp_path):
    data = files(tmp_path, ".png")
    items, out = batch(DeviceDecodedImages(data, 16, 0.0, ship_jpegs=False), 6)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.uint8
    flips = set()
    for i, (_, draws, encoded) in enumerate(items):
        rng = np.random.default_rng([0, i])
        left, top, w, h = resized_crop_box(60, 40, rng)  # the host recipe's draws, in its order
        flip = rng.random() < 0.5
        assert tuple(draws[:5]) == (left, top, w, h, flip) and not encoded
        pixels = torch.from_numpy(np.asarray(Image.open(tmp_path / f"{i}.png")).transpose(2, 0, 1).copy())
        crop = F.interpolate(pixels[None, :, top: top + h, left: left + w].float(), size=(16, 16), mode="bilinear",
                             antialias=True).round().clamp(0, 255).to(torch.uint8)[0]
        assert torch.equal(out[i], crop.flip(2) if flip else crop)
        # torchvision's tensor resize and Pillow's differ by a little, not by the picture
        with Image.open(tmp_path / f"{i}.png") as img:
            pil = np.asarray(img.resize((16, 16), Image.BILINEAR, box=(left, top, left + w, top + h))).transpose(2, 0, 1)
        assert np.abs((pil[:, :, ::-1] if flip else pil) - out[i].numpy().astype(int)).mean() < 3
        flips.add(flip)
    assert flips == {True, False}


def test_jitter_is_drawn_as_on_the_host_and_applied_after_the_crop(tmp_path):
    data = files(tmp_path, ".png")
    plain_items, plain = batch(DeviceDecodedImages(data, 16, 0.0, ship_jpegs=False), 6)
    items, jittered = batch(DeviceDecodedImages(data, 16, 0.4, ship_jpegs=False), 6)
    host = FileImages(data, "resized_crop", 16, 18, 0.4, jitter_on_device=True)
    for i, (_, draws, _) in enumerate(items):
        assert np.array_equal(draws[5:], host.image(i, np.random.default_rng([0, i]))[1])
        assert np.array_equal(draws[:5], plain_items[i][1])
    assert torch.equal(jittered, color_jitter(plain, torch.from_numpy(np.stack([d[5:] for _, d, _ in items]))))


def test_jpegs_shipped_encoded_give_the_batch_decoded_ones_do(tmp_path):
    data = files(tmp_path, ".jpg")
    shipped_items, shipped = batch(DeviceDecodedImages(data, 16, 0.4, ship_jpegs=True), 6, seed=3)
    decoded_items, decoded = batch(DeviceDecodedImages(data, 16, 0.4, ship_jpegs=False), 6, seed=3)
    assert all(encoded for _, _, encoded in shipped_items) and not any(e for _, _, e in decoded_items)
    assert shipped_items[0][0].nbytes == (tmp_path / "0.jpg").stat().st_size  # the file's bytes, not pixels
    assert torch.equal(shipped, decoded)
    Image.open(tmp_path / "0.jpg").save(tmp_path / "0.png")  # a PNG among JPEGs is decoded by its worker
    mixed = FileDataset(str(tmp_path), np.array([b"0.png", b"1.jpg"]), np.array([0, 1]), 2)
    mixed_items, _ = batch(DeviceDecodedImages(mixed, 16, 0.4, ship_jpegs=True), 2, seed=3)
    assert [e for _, _, e in mixed_items] == [False, True] and mixed_items[0][0].shape == (3, 40, 60)


def test_decode_gpu_trains_through_the_cpu_fallback_and_says_what_it_needs(tmp_path):
    assert gpu_jpeg_decoder(torch.device("cpu")) is False
    root = write_imagenet_lt(tmp_path / "jpegs")
    metrics = train(imagenet_cfg(root, tmp_path / "run", "data.decode=gpu", "data.workers=1"))
    assert metrics["curve"][-1]["loss"] < metrics["curve"][0]["loss"]
    arrays = ArrayDataset(np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 1]))
    cfg = imagenet_cfg(root, tmp_path / "x", "data.decode=gpu", "data.augment=crop_flip").data
    with pytest.raises(DataError, match=r"^data.decode=gpu decodes image files; imagenet-lt is decoded in memory$"):
        make_feeds(arrays, arrays, torch.device("cpu"), cfg)
    listed = FileDataset(str(root), np.array([b"a.jpg"]), np.array([0]), 1)
    for override, message in (("data.augment=none", r"runs the train recipe data.augment=resized_crop; got none"),
                              (f"data.pack={tmp_path}", r"and data.pack=.* exclude each other")):
        cfg = imagenet_cfg(root, tmp_path / "x", "data.decode=gpu", override).data
        with pytest.raises(DataError, match=message):
            make_feeds(listed, listed, torch.device("cpu"), cfg)
