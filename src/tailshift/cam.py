"""Batched class activation maps and CSA background masks (paper Sec. 3.1).

Written by hand for speed: peers register forward/backward hooks on the
backbone and loop over the images of a batch (one backward per sample), which
dominates a CSA step. Here one ``torch.autograd.grad`` call on the whole
batch differentiates only the head with respect to the given feature map, so
no backbone stage is re-run, no parameter ``.grad`` is touched and no hook is
ever registered. Everything stays on the tensors' device.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

CAM_METHODS = ("gradcam", "cam")
#: the power of two an fp16 Grad-CAM objective is scaled by (the map is unscaled after the gradient)
FP16_OBJECTIVE_SCALE = 2.0**10


def full_precision(device: torch.device):
    """A region where autocast is off: CAMs, their upsampling and the masks are computed in float32
    whatever precision the training step runs in (bf16's 8-bit mantissa would quantise the maps)."""
    return torch.autocast(device.type, enabled=False)


class CamResult(NamedTuple):
    """``cam``: B x h x w, unnormalised (non-negative for Grad-CAM). ``logits``: B x K, detached, reusable for
    the confidence filter (delta) without a second head pass."""

    cam: torch.Tensor
    logits: torch.Tensor


def grad_cam(
    feature_map: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor] | None,
    targets: torch.Tensor,
    logits: torch.Tensor | None = None,
) -> CamResult:
    """Grad-CAM (Selvaraju et al.) of ``targets`` at ``feature_map`` (B x C x h x w).

    ``head`` maps a feature map to logits, e.g. ``lambda a: fc(backbone.embed(a))``.
    The objective is the sum over the batch of the target logits; each sample's
    logit depends only on its own map, so one gradient gives every per-sample
    gradient. Channel weights are the spatial means of that gradient and
    ``cam = ReLU(sum_k w_k A_k)``, in float32 also under autocast. Works under ``torch.no_grad()`` too.

    ``logits``: the caller's own logits, computed from ``feature_map`` with
    autograd recording (e.g. a training forward). The gradient is then taken
    through that graph, which is kept for the caller's backward, so the head
    is not run a second time; ``head`` is not used.
    """
    if logits is not None:
        if not feature_map.requires_grad or not logits.requires_grad:
            raise ValueError("grad_cam(logits=...) needs logits computed from feature_map with autograd recording")
        # fp16 gradients flush to zero below ~6e-8 (a zero map is an all-ones mask): scale the objective by a
        # power of two through the caller's fp16 graph and unscale exactly in float32
        scale = FP16_OBJECTIVE_SCALE if feature_map.dtype == torch.float16 else 1.0
        with torch.enable_grad():
            objective = logits.gather(1, targets.view(-1, 1)).float().sum() * scale
            (grad,) = torch.autograd.grad(objective, feature_map, retain_graph=True)
        grad = grad.float() / scale
    else:
        if head is None:
            raise ValueError("grad_cam needs a head callable or the logits of feature_map")
        # the head pass of its own runs in float32 even under autocast: gradients and logits at full precision
        fmap = feature_map.detach().float().requires_grad_(True)
        with torch.enable_grad(), full_precision(feature_map.device):
            logits = head(fmap)
            objective = logits.gather(1, targets.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(objective, fmap)
    with full_precision(feature_map.device):
        weights = grad.float().mean(dim=(2, 3))
        cam = F.relu(torch.einsum("bc,bchw->bhw", weights, feature_map.detach().float()))
    return CamResult(cam, logits.detach())


def class_activation_map(
    feature_map: torch.Tensor, classifier_weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """CAM (Zhou et al. 2016) for GAP + linear models: ``sum_k W[y, k] A_k``, B x h x w.

    No ReLU, as in the release's CAM branch (docs/protocol-notes.md, Table 8): negative evidence
    is kept and min-max scaled with the rest. For such a model Grad-CAM is the ReLU of
    this map times 1 / (h * w), so the two masks agree exactly where the map is
    non-negative everywhere and differ wherever the weighted sum is negative.
    """
    weights = classifier_weight.detach()[targets].float()
    with full_precision(feature_map.device):
        return torch.einsum("bc,bchw->bhw", weights, feature_map.detach().float())


def normalize_cam(cam: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample min-max scaling to [0, 1].

    The range is clamped below by ``eps``: a constant map (e.g. all zero, when no
    channel has a positive weight) becomes all zeros instead of the 0/0 NaN of
    the release, and a range under ``eps`` still stays within [0, 1).
    """
    flat = cam.flatten(1).float()  # in float32 also under autocast: eps is 0 in fp16
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(eps)
    return ((flat - low) / span).view(cam.shape)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)  # a first call during evaluation must still cache a tensor autograd may save
def _bicubic_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype, repeat: int = 1) -> torch.Tensor:
    """The n_out x n_in matrix of PyTorch's 1-d bicubic resampling (align_corners=False),
    read off by resampling the identity, so it is exactly F.interpolate's linear map.
    ``repeat`` > 1 repeats each output row that many times in a row."""
    eye = torch.eye(n_in, device=device, dtype=dtype).view(n_in, 1, 1, n_in)
    rows = F.interpolate(eye, size=(1, n_out), mode="bicubic", align_corners=False)
    return rows.view(n_in, n_out).t().repeat_interleave(repeat, dim=0).contiguous()


def upsample_cam(cam: torch.Tensor, size: int | tuple[int, int], channels: int = 1) -> torch.Tensor:
    """Bicubic upsampling of a B x h x w (or B x 1 x h x w) map to B x channels x H x W, clamped to [0, 1].

    Bicubic resampling is separable and linear, so it is computed as two small
    matrix products with cached interpolation matrices: the same numbers as
    ``F.interpolate(mode="bicubic")`` (a test checks) at a fraction of its CPU
    cost for a whole batch. Bicubic overshoots near sharp edges, hence the clamp
    (as in the release).

    ``channels`` > 1 repeats the map over that many channels in channels-last
    memory, made by the column product itself (each output column repeated), so a
    channels-last image batch is fused with it elementwise on matching strides:
    on CPU a 1-channel mask broadcast over the innermost (channel) axis of a
    channels-last batch makes the fusion about 5x slower.
    """
    if cam.dim() == 4:
        cam = cam.squeeze(1)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    rows = _bicubic_matrix(cam.shape[-2], int(height), cam.device, cam.dtype)
    cols = _bicubic_matrix(cam.shape[-1], int(width), cam.device, cam.dtype, channels)
    up = torch.matmul(torch.matmul(rows, cam), cols.t())  # B x H x (W * channels)
    up = up.unsqueeze(1) if channels == 1 else up.view(-1, int(height), int(width), channels).permute(0, 3, 1, 2)
    return up.clamp_(0.0, 1.0)


def background_mask(cam: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """``M = (1 - cam) ** power``: high where the image is context, not class evidence.

    The paper uses power 1; the released code squares it (power 2), which keeps
    less of the object's surroundings.
    """
    if power <= 0:
        raise ValueError(f"mask power must be > 0, got {power}")
    mask = 1.0 - cam
    return mask if power == 1 else mask.pow_(power)


def context_masks(
    feature_map: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor] | None,
    targets: torch.Tensor,
    image_size: int | tuple[int, int],
    method: str = "gradcam",
    power: float = 1.0,
    classifier_weight: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    channels: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Background masks B x 1 x H x W in [0, 1] for the images behind ``feature_map``.

    cam -> per-sample min-max -> bicubic to ``image_size`` -> clamp -> (1 - cam) ** power.
    Returns ``(mask, logits)``; logits come from the Grad-CAM pass and are
    ``None`` for ``method="cam"``, which never runs the head (it needs
    ``classifier_weight`` instead). ``logits``: see ``grad_cam``. ``channels``: see
    ``upsample_cam`` (B x channels x H x W, channels-last, for channels-last images).
    """
    if method == "gradcam":
        if head is None and logits is None:
            raise ValueError("method 'gradcam' needs a head callable")
        cam, logits = grad_cam(feature_map, head, targets, logits)
    elif method == "cam":
        if classifier_weight is None:
            raise ValueError("method 'cam' needs classifier_weight (K x C)")
        cam, logits = class_activation_map(feature_map, classifier_weight, targets), None
    else:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(CAM_METHODS)}")
    with full_precision(feature_map.device):
        mask = background_mask(upsample_cam(normalize_cam(cam), image_size, channels), power)
    return mask, logits
