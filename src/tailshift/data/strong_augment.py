"""The strong view recipe of contrastive learning (MoCo v2's, which BCL calls SimAugment), batched on the device.

Per image, in torchvision's order: RandomResizedCrop (area share in ``crop_scale``, aspect ratio log-uniform
in [3/4, 4/3], ten tries then the whole image; bilinear back to H x W), horizontal flip with p = 0.5,
ColorJitter(brightness, contrast, saturation = ``jitter``, hue = ``hue``) with p = ``jitter_p``, its four
changes in a random order per image, RandomGrayscale with p = ``grayscale_p``, and a Gaussian blur of sigma
uniform in [0.1, 2] with p = ``blur_p``. The CIFAR form (crop scale (0.2, 1), jitter 0.4 / hue 0.1 with
p 0.8, greyscale p 0.2, blur p 0.5) is the CSA release's (shijxcs/CSA@746dba2 CSA/datasets/cifar100.py
lines 89-99, cifar10.py alike; its GaussianBlur CSA/datasets/gaussianblur.py); BCL's own code holds only its
224-pixel ImageNet form (FlamieZhu/Balanced-Contrastive-Learning@f72d070 main.py lines 172-181: crop scale
(0.08, 1), no blur). Every draw is made for the whole batch from the generator handed in, on the images'
device, so a view is a pure function of the images and the generator's state. Images are float in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: RandomResizedCrop's aspect-ratio range and tries (torchvision's defaults)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10
#: the blur's sigma range (the release's and BCL's GaussianBlur([.1, 2.])) and the kernel's half-width, 3 sigma
BLUR_SIGMA = (0.1, 2.0)
BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA[1])
#: ITU-R 601-2 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class StrongViewRecipe:
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device, generator=generator)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator,
               device) -> torch.Tensor:
    """(left, top, w, h) per image (n x 4, float pixels) as torchvision's RandomResizedCrop.get_params draws
    them: area share uniform in ``scale``, log-ratio uniform, the first of ten tries that fits, else the
    whole image (its ratio lies inside [3/4, 4/3] for the square images this serves)."""
    area = height * width
    share = _uniform(n * CROP_TRIES, *scale, generator, device).view(n, CROP_TRIES)
    log_ratio = _uniform(n * CROP_TRIES, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator, device)
    ratio = log_ratio.view(n, CROP_TRIES).exp()
    w = torch.round(torch.sqrt(area * share * ratio))
    h = torch.round(torch.sqrt(area * share / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(dim=1), fits.float().argmax(dim=1), torch.full((n,), -1, device=device))
    rows = torch.arange(n, device=device)
    w = torch.where(first >= 0, w[rows, first.clamp(min=0)], torch.full((n,), float(width), device=device))
    h = torch.where(first >= 0, h[rows, first.clamp(min=0)], torch.full((n,), float(height), device=device))
    top = torch.floor(torch.rand(n, device=device, generator=generator) * (height - h + 1))
    left = torch.floor(torch.rand(n, device=device, generator=generator) * (width - w + 1))
    return torch.stack([left, top, w, h], dim=1)


def _taps(start: torch.Tensor, size: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps of resizing [start, start + size) to ``out`` pixels (n x out each): the lower and upper
    source pixel and the upper one's weight, pixel centres aligned and the taps kept inside the crop,
    as PIL resizes a cropped image (a tap past the crop's edge gets no weight)."""
    centres = start[:, None] + (torch.arange(out, device=start.device) + 0.5) * size[:, None] / out - 0.5
    last = (start + size - 1)[:, None]
    centres = torch.minimum(centres.clamp(min=0).maximum(start[:, None]), last)
    low = centres.floor()
    return low.long(), torch.minimum(low + 1, last).long(), centres - low


def resized_crop_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Each image's box (left, top, w, h) resized to the full size (bilinear, as torchvision's resized crop
    of a PIL image), mirrored where ``flip``: two gathers per axis for the whole batch."""
    n, c, height, width = images.shape
    left, top, w, h = boxes.unbind(dim=1)
    y0, y1, fy = _taps(top, h, height)
    x0, x1, fx = _taps(left, w, width)
    x0, x1, fx = (torch.where(flip[:, None], t.flip(1), t) for t in (x0, x1, fx))
    rows = lambda idx: images.gather(2, idx.view(n, 1, height, 1).expand(n, c, height, width))  # noqa: E731
    fy = fy.view(n, 1, height, 1)
    images = rows(y0) * (1 - fy) + rows(y1) * fy
    cols = lambda idx: images.gather(3, idx.view(n, 1, 1, width).expand(n, c, height, width))  # noqa: E731
    fx = fx.view(n, 1, 1, width)
    return cols(x0) * (1 - fx) + cols(x1) * fx


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (N x 1 x H x W); a one-channel image is its own."""
    if images.shape[1] != 3:
        return images
    r, g, b = images.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * images + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, hue + ``shift`` (in turns, per image) modulo 1, -> RGB (torchvision's adjust_hue)."""
    if images.shape[1] != 3:
        return images
    r, g, b = images.unbind(dim=1)
    top, _ = images.max(dim=1)
    bottom, _ = images.min(dim=1)
    spread = top - bottom
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    hue = torch.where(top == r, ((g - b) / safe) % 6, torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(spread > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    saturation = torch.where(top > 0, spread / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(top))
    # HSV -> RGB: channel c = V - V S clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 H) mod 6, n = (5, 3, 1) for R, G, B
    k = (torch.tensor([5.0, 3.0, 1.0], device=images.device).view(1, 3, 1, 1) + 6 * hue.unsqueeze(1)) % 6
    return top.unsqueeze(1) - (top * saturation).unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)


def color_jitter(images: torch.Tensor, strength: float, hue: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter(strength, strength, strength, hue) on every image: brightness, contrast,
    saturation factors uniform in [max(0, 1 - s), 1 + s], hue shift uniform in [-hue, hue], applied in
    an order drawn per image (a random permutation, as ColorJitter draws one per call)."""
    n, device = images.shape[0], images.device
    factors = [_uniform(n, max(0.0, 1 - strength), 1 + strength, generator, device) for _ in range(3)]
    shift = _uniform(n, -hue, hue, generator, device)
    order = torch.rand(n, 4, device=device, generator=generator).argsort(dim=1)  # order[i, k]: image i's k-th change
    factor = torch.stack(factors, dim=1)  # n x 3: brightness, contrast, saturation
    rows = torch.arange(n, device=device)
    for k in range(4):
        change = order[:, k]
        # brightness, contrast and saturation are one blend, each with its own other image (black, the mean
        # grey level, the grey image); the hue turn is computed for the images it is drawn for only
        grey = grayscale(images)
        other = torch.where((change == 0).view(n, 1, 1, 1), torch.zeros_like(grey),
                            torch.where((change == 1).view(n, 1, 1, 1), grey.mean(dim=(1, 2, 3), keepdim=True), grey))
        blended = _blend(images, other, factor[rows, change.clamp(max=2)])
        turned = (change == 3).nonzero().squeeze(1)
        images = blended.index_copy(0, turned, shift_hue(images.index_select(0, turned), shift.index_select(0, turned)))
    return images


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur of each image with its own ``sigma`` (pixels), edges replicated."""
    n, c, height, width = images.shape
    offsets = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n c) x taps
    flat = images.reshape(1, n * c, height, width)
    flat = F.conv2d(F.pad(flat, (BLUR_RADIUS, BLUR_RADIUS, 0, 0), mode="replicate"), kernel.view(n * c, 1, 1, -1),
                    groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, BLUR_RADIUS, BLUR_RADIUS), mode="replicate"), kernel.view(n * c, 1, -1, 1),
                    groups=n * c)
    return flat.view(n, c, height, width)


def strong_views(images: torch.Tensor, recipe: StrongViewRecipe, generator: torch.Generator) -> torch.Tensor:
    """One strong view of each image (N x C x H x W float in [0, 1]) by ``recipe`` (see the module)."""
    n, _, height, width = images.shape
    device = images.device
    boxes = crop_boxes(n, height, width, recipe.crop_scale, generator, device)
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    out = resized_crop_flip(images.float(), boxes, flip)

    def sometimes(p: float, changed: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        chosen = (torch.rand(n, device=device, generator=generator) < p).view(n, 1, 1, 1)
        return torch.where(chosen, changed, current)

    out = sometimes(recipe.jitter_p, color_jitter(out, recipe.jitter, recipe.hue, generator), out)
    out = sometimes(recipe.grayscale_p, grayscale(out).expand_as(out), out)
    sigma = _uniform(n, *BLUR_SIGMA, generator, device)
    return sometimes(recipe.blur_p, gaussian_blur(out, sigma), out)
