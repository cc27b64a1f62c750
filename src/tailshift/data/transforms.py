"""Per-image recipes of the host loader (``data/host_loader.py``), with Pillow and numpy (no torchvision).

The standard ImageNet recipes, drawn the way torchvision draws them:
* train (``resized_crop``): RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3), 10 tries
  then the central crop), horizontal flip with p = 0.5, ColorJitter(brightness, contrast,
  saturation = jitter) applied in a random order;
* eval: the shorter side resized to ``resize`` (bilinear), the central ``size`` x ``size`` crop;
* ``crop_flip`` for images held in memory: zero-pad, random crop back, random flip (as the
  device pipeline's ``random_crop_flip``).

Every random draw comes from the ``numpy.random.Generator`` handed in, one per image, so
an image's augmentation depends on the run seed and its place in the epoch only, never on
which worker process decoded it. Outputs are uint8 C x H x W; normalisation happens on the
training device after the copy (a quarter of the bytes of floats).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

#: Pillow modes with more than 8 bits per channel and the value each scales to 255 (never clipped
#: to 255 the way ``Image.convert`` does: a 16-bit PNG would turn almost white); "F" is read as 0..1
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
#: how a mode is named in a dataset's note (``SplitDataset.caveat``)
CONVERSIONS = {mode: f"{mode} scaled from 0..{top:g} to 8 bits" for mode, top in WIDE_MODES.items()}

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def resized_crop_box(width: int, height: int, rng: np.random.Generator,
                     scale=RRC_SCALE, ratio=RRC_RATIO) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop of area share in ``scale`` and aspect ratio in ``ratio``
    (log-uniform); after 10 misses, the central crop with the ratio clamped into ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def color_jitter(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation, each by a factor uniform in [1 - s, 1 + s], in random order."""
    factors = [rng.uniform(max(0.0, 1 - strength), 1 + strength) for _ in range(3)]
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for k in rng.permutation(3):
        img = enhancers[k](img).enhance(factors[k])
    return img


def to_8bit(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode`` (L or RGB) at 8 bits per channel: a ``WIDE_MODES`` image scaled by its
    range (values beyond it clipped), any other mode (palette, CMYK, alpha...) by Pillow."""
    top = WIDE_MODES.get(img.mode)
    if top is None:
        return img.convert(mode)  # a copy, decoded: the file may be closed after
    values = np.asarray(img, dtype=np.float64) * (255.0 / top)
    grey = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return grey if mode == "L" else grey.convert(mode)


def to_chw(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def train_image(img: Image.Image, size: int, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop(size) -> horizontal flip -> ColorJitter(jitter) (0: none), uint8 3 x size x size."""
    left, top, w, h = resized_crop_box(img.width, img.height, rng)
    img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if jitter > 0:
        img = color_jitter(img, jitter, rng)
    return to_chw(img)


def eval_image(img: Image.Image, resize: int, size: int) -> np.ndarray:
    """Shorter side to ``resize`` (aspect kept), then the central size x size crop; uint8 3 x size x size."""
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return to_chw(img.crop((left, top, left + size, top + size)))


def crop_flip(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by ``padding``, crop back to H x W at a random offset, flip with p = 0.5 (C x H x W)."""
    c, h, w = image.shape
    off_y, off_x = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2))
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=image.dtype)
    padded[:, padding: padding + h, padding: padding + w] = image
    out = padded[:, off_y: off_y + h, off_x: off_x + w]
    return out[:, :, ::-1] if rng.random() < 0.5 else out
