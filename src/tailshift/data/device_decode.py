"""``data.decode=gpu``: the train recipe with JPEG decoding and every pixel operation on the device.

The loader workers only read each file and draw its augmentation (crop box from the header, flip,
jitter: the same draws, from the same per-image generator, as the host recipe); the training
process decodes the batch's JPEGs on the GPU (torchvision's nvJPEG decoder, batched) and crops,
resizes (bilinear, antialiased: torchvision's tensor RandomResizedCrop), flips and jitters there.
A worker's cost per image drops to a file read and a header parse. Written by hand because no
library batches crop-and-resize of differently sized images with per-image draws.

Files that decoder cannot take (not JPEG, or CMYK) are decoded by the worker with Pillow and
travel as pixels; where torchvision's decoder cannot run (no CUDA, or a torchvision without its
image library) every file does, and the device still does the rest: the CPU fallback, which the
tests run. The test recipe always decodes on the host, as ``evaluate`` and ``predict`` do, so
scores stay comparable between runs that decode differently.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .color import color_jitter
from .lists import FileDataset
from .transforms import JITTER_DRAWS, jitter_draws, resized_crop_box, to_8bit

#: per image: crop left, top, width, height; flip; then the jitter draws (if any)
GEOMETRY = 5


def gpu_jpeg_decoder(device: torch.device) -> bool:
    """Whether torchvision's JPEG decoder runs on ``device`` (tried on a tiny image); if not, says
    once why, and workers decode with Pillow."""
    if device.type != "cuda":
        return False
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        decode_jpeg([_tiny_jpeg()], mode=ImageReadMode.RGB, device=device)
    except (ImportError, RuntimeError) as err:
        warnings.warn(f"data.decode=gpu: torchvision's JPEG decoder does not run on {device} "
                      f"({str(err).splitlines()[0]}); workers decode with Pillow, the device does the rest")
        return False
    return True


def _tiny_jpeg() -> torch.Tensor:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="JPEG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG files' bytes -> RGB uint8 3 x H x W on ``device``: torchvision's batched decoder on a
    GPU, Pillow on the CPU (where the workers would have decoded them in the first place)."""
    if not encoded:
        return []
    if device.type == "cuda":
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    out = []
    for data in encoded:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            out.append(torch.from_numpy(np.asarray(to_8bit(img, "RGB")).transpose(2, 0, 1).copy()))
    return out


class DeviceDecodedImages:
    """The train recipe of image files for ``data.decode=gpu`` (see the module docstring).
    ``ship_jpegs``: JPEGs travel encoded and are decoded by ``decode_jpegs`` in the training
    process; else the workers decode every file."""

    def __init__(self, data: FileDataset, crop_size: int, jitter: float, ship_jpegs: bool):
        self.data, self.crop_size, self.jitter, self.ship_jpegs = data, crop_size, jitter, ship_jpegs
        self.shape = (3, crop_size, crop_size)
        self.draws = JITTER_DRAWS if jitter > 0 else 0

    def __len__(self) -> int:
        return len(self.data)

    def labels(self) -> np.ndarray:
        return self.data.labels

    def image(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
        """(the file's bytes, or its RGB pixels 3 x H x W; the draws: crop box, flip, jitter; whether
        it is an encoded JPEG)."""
        raw = np.fromfile(self.data.path(i), dtype=np.uint8)
        with Image.open(io.BytesIO(raw.tobytes())) as img:
            width, height = img.size
            encoded = self.ship_jpegs and img.format == "JPEG" and img.mode in ("RGB", "L")
            payload = raw if encoded else np.asarray(to_8bit(img, "RGB")).transpose(2, 0, 1)
        box = resized_crop_box(width, height, rng)
        flip = rng.random() < 0.5
        draws = jitter_draws(self.jitter, rng) if self.jitter > 0 else np.zeros(0, np.float32)
        return payload, np.array([*box, flip, *draws], dtype=np.float32), encoded

    def collate(self, items: list) -> tuple:
        """A worker's batch: (payloads, draws, encoded flags)."""
        return ([torch.from_numpy(np.ascontiguousarray(payload)) for payload, _, _ in items],
                torch.from_numpy(np.stack([draws for _, draws, _ in items])),
                torch.tensor([encoded for _, _, encoded in items]))

    def finish(self, parts: tuple, device: torch.device) -> torch.Tensor:
        """Decode, crop-resize, flip and jitter the batch on ``device``: uint8 N x 3 x S x S."""
        payloads, draws, encoded = parts
        flags = encoded.tolist()
        decoded = iter(decode_jpegs([p for p, e in zip(payloads, flags) if e], device))
        size = (self.crop_size, self.crop_size)
        crops = []
        for payload, is_jpeg, (left, top, w, h) in zip(payloads, flags, draws[:, :4].long().tolist()):
            image = next(decoded) if is_jpeg else payload.to(device, non_blocking=True)
            crop = image[None, :, top: top + h, left: left + w].float()
            crops.append(F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False))
        x = torch.cat(crops).round_().clamp_(0, 255)
        draws = draws.to(device, non_blocking=True)
        x = torch.where(draws[:, 4].bool().view(-1, 1, 1, 1), x.flip(3), x).to(torch.uint8)
        return color_jitter(x, draws[:, GEOMETRY:]) if self.draws else x
