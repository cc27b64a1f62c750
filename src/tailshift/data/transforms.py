"""Per-image recipes of the host loader (``data/host_loader.py``), with Pillow and numpy (no torchvision).

The standard ImageNet recipes, drawn the way torchvision draws them:
* train (``resized_crop``): RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3), 10 tries
  then the central crop), horizontal flip with p = 0.5, ColorJitter(brightness, contrast,
  saturation = jitter) applied in a random order. The crop is drawn from the file's header
  before decoding, so a JPEG whose crop is at least twice the output size decodes at a reduced
  DCT scale (``draft_reduction``). The jitter is drawn here; on a GPU it is applied to the whole
  batch on the device (``data/color.py``, equal pixel for pixel), which takes a third of the
  per-image host time off the loader workers; on a CPU device the workers apply it with Pillow;
* eval: the shorter side resized to ``resize`` (bilinear), the central ``size`` x ``size`` crop;
* test-time ensembling (``data.tte=fivecrop``, LIFT's): the shorter side resized, then the four corner
  crops and the central one (``five_crops``), whose logits the evaluation averages;
* images held in memory take the same recipes (decoded to Pillow images first): LIFT's CIFAR-100-LT at 224;
* ``crop_flip`` for images held in memory: zero-pad, random crop back, random flip (as the
  device pipeline's ``random_crop_flip``).

Every random draw comes from the ``numpy.random.Generator`` handed in, one per image, so
an image's augmentation depends on the run seed and its place in the epoch only, never on
which worker process decoded it. Outputs are uint8 C x H x W; normalisation happens on the
training device after the copy (a quarter of the bytes of floats).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


#: per-image colour jitter draws: brightness, contrast and saturation factors, then the order they apply in
JITTER_DRAWS = 6
#: JPEG DCT scale-downs Pillow's ``draft`` offers
DCT_REDUCTIONS = (8, 4, 2)


def jitter_draws(strength: float, rng: np.random.Generator) -> np.ndarray:
    """ColorJitter's draws (each factor uniform in [1 - s, 1 + s], then a random order), applied later
    on the device by ``data.color.color_jitter``; float32 [brightness, contrast, saturation, order...]."""
    factors = [rng.uniform(max(0.0, 1 - strength), 1 + strength) for _ in range(3)]
    return np.array([*factors, *rng.permutation(3)], dtype=np.float32)


def pillow_color_jitter(img: Image.Image, draws: np.ndarray) -> Image.Image:
    """``jitter_draws`` applied with Pillow's ``ImageEnhance`` (torchvision's ColorJitter on PIL images)."""
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for k in draws[3:].astype(int):
        img = enhancers[k](img).enhance(float(draws[k]))
    return img


def draft_reduction(width: int, height: int, size: int) -> int:
    """The largest JPEG DCT scale-down that leaves a ``width`` x ``height`` crop at least ``size``
    pixels a side, so the resize after it still only shrinks (1: decode at full scale)."""
    return next((k for k in DCT_REDUCTIONS if width // k >= size and height // k >= size), 1)


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
    """uint8 C x H x W of an RGB or greyscale (L) image."""
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def from_chw(image: np.ndarray) -> Image.Image:
    """A uint8 C x H x W array (C = 1 or 3) as a Pillow image (L or RGB)."""
    return Image.fromarray(image[0], "L") if image.shape[0] == 1 else Image.fromarray(image.transpose(1, 2, 0), "RGB")


def open_train_image(path: str, size: int, rng: np.random.Generator) -> tuple[Image.Image, tuple]:
    """The RGB image a train crop is cut from, and the crop box in its pixels: the box is drawn from the
    header's size, and a JPEG decodes at the DCT scale ``draft_reduction`` allows for that box (the
    box is scaled with it), skipping most of the work of a full decode for large crops."""
    with Image.open(path) as img:
        width, height = img.size
        box = resized_crop_box(width, height, rng)
        reduction = draft_reduction(box[2], box[3], size)
        if reduction > 1:
            img.draft(img.mode, (width // reduction, height // reduction))  # no-op unless a JPEG
        img = to_8bit(img, "RGB")
    sx, sy = img.width / width, img.height / height
    left, top, w, h = box
    return img, (left * sx, top * sy, (left + w) * sx, (top + h) * sy)


def train_crop(img: Image.Image, box: tuple, size: int, jitter: float,
               rng: np.random.Generator) -> tuple[Image.Image, np.ndarray | None]:
    """RandomResizedCrop's ``box`` resized to size x size -> horizontal flip, and ColorJitter(jitter)'s
    draws (``jitter_draws``; None for 0: no jitter), to apply on the device or with ``pillow_color_jitter``."""
    img = img.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img, (jitter_draws(jitter, rng) if jitter > 0 else None)


def _shorter_side_to(img: Image.Image, resize: int) -> Image.Image:
    """Shorter side to ``resize``, aspect kept (torchvision's Resize(int))."""
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    return img.resize((new_w, new_h), Image.BILINEAR)


def _central_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def eval_image(img: Image.Image, resize: int, size: int) -> np.ndarray:
    """Shorter side to ``resize`` (aspect kept), then the central size x size crop; uint8 C x size x size."""
    img = _shorter_side_to(img, resize)
    return to_chw(img.crop(_central_box(img.width, img.height, size)))


def five_crops(img: Image.Image, resize: int, size: int) -> np.ndarray:
    """LIFT's test-time ensemble views (shijxcs/LIFT trainer.py lines 117-123: Resize(resolution + expand),
    FiveCrop(resolution)): the shorter side to ``resize``, then torchvision's FiveCrop order, the top-left,
    top-right, bottom-left and bottom-right corners and the centre; uint8 5 x C x size x size."""
    img = _shorter_side_to(img, resize)
    w, h = img.size
    corners = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size)]
    boxes = [(left, top, left + size, top + size) for left, top in corners] + [_central_box(w, h, size)]
    return np.stack([to_chw(img.crop(box)) for box in boxes])


def crop_flip(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by ``padding``, crop back to H x W at a random offset, flip with p = 0.5 (C x H x W)."""
    c, h, w = image.shape
    off_y, off_x = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2))
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=image.dtype)
    padded[:, padding: padding + h, padding: padding + w] = image
    out = padded[:, off_y: off_y + h, off_x: off_x + w]
    return out[:, :, ::-1] if rng.random() < 0.5 else out


@dataclass(frozen=True)
class EvalViews:
    """How the eval recipe views an image: the shorter side to ``resize``, the central ``size`` crop; with
    ``tte="fivecrop"`` the shorter side to ``tte_resize`` and ``five_crops`` (5 x C x size x size)."""

    resize: int
    size: int
    tte: str = "none"
    tte_resize: int = 248

    def __call__(self, img: Image.Image) -> np.ndarray:
        if self.tte == "fivecrop":
            return five_crops(img, self.tte_resize, self.size)
        return eval_image(img, self.resize, self.size)
