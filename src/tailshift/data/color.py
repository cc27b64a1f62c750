"""ColorJitter on the training device, for a whole batch at once, equal pixel for pixel to Pillow's.

Written by hand because it is on the host loader's critical path: applied per image with Pillow's
``ImageEnhance`` in the loader workers it took a third of each image's decode-and-augment time; on
the device it is a few tensor passes over the batch. It reproduces ``ImageEnhance`` exactly (what
torchvision's ColorJitter runs on PIL images): every enhancement is ``Image.blend(degenerate, image,
factor)``, computed in float32, truncated and clipped to 0..255; brightness blends with black,
contrast with the rounded mean of the image's grey level, saturation with its grey image, where
grey is Pillow's fixed-point ITU-R 601-2 luma.
"""
from __future__ import annotations

import torch

#: Pillow's RGB -> L weights (Convert.c, ``L24``): 16-bit fixed point, rounded
LUMA = (19595, 38470, 7471)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Pillow's grey level of integral-valued RGB images (N x 3 x H x W) -> N x 1 x H x W."""
    r, g, b = x.to(torch.int32).unbind(1)
    return ((r * LUMA[0] + g * LUMA[1] + b * LUMA[2] + 0x8000) >> 16).unsqueeze(1)


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``Image.blend(degenerate, x, factor)`` per image: degenerate + factor * (x - degenerate) in
    float32, truncated, clipped to 0..255."""
    degenerate = degenerate.float()
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).trunc_().clamp_(0, 255)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(torch.zeros(1, 1, 1, 1, device=x.device), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    grey = luma(x)
    mean = torch.floor(grey.sum(dim=(1, 2, 3), dtype=torch.int64).double() / grey[0].numel() + 0.5)
    return blend(mean.view(-1, 1, 1, 1), x, factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(luma(x), x, factor)


#: in the order of ``transforms.jitter_draws``' factors
ENHANCEMENTS = (brightness, contrast, saturation)


def color_jitter(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (N x 3 x H x W) jittered by their ``transforms.jitter_draws`` (N x 6: three
    factors, then the order of the enhancements). Images are grouped by order, so the batch costs one
    host synchronisation and three passes, whatever its size."""
    x = images.float()
    order = draws[:, 3:].long()
    key = order[:, 0] * 9 + order[:, 1] * 3 + order[:, 2]
    ranked = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=27).tolist()
    start = 0
    for key_value, count in enumerate(counts):
        if count:
            rows = ranked[start: start + count]
            group = x[rows]
            for k in (key_value // 9, key_value // 3 % 3, key_value % 3):
                group = ENHANCEMENTS[k](group, draws[rows, k])
            x[rows] = group
            start += count
    return x.to(torch.uint8)
