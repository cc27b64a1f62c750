"""The mixing operations on images and their labels: context-shift fusion (paper Eq. 6-7, Fig. 8),
mixup (Zhang et al. 2018) and CutMix boxes. The methods that use them: ``csa``, ``decoupled``
(+ mixup), ``dual`` and ``mixing_methods`` (Remix, CMO).

All randomness goes through an optional ``torch.Generator`` so a run is
reproducible from its seed; draws happen on the generator's device (CPU by
default) and the result is moved to ``device``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..tensors import gather_rows

LAMBDA_DISTRIBUTIONS = ("uniform", "beta")


def fuse_context(
    x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor, lam: float | torch.Tensor
) -> torch.Tensor:
    """``lam * M * x_ctx + (1 - lam * M) * x`` (Eq. 7), computed as one ``lerp``.

    ``x``, ``context``: normalised images B x C x H x W; ``mask``: the context's
    background mask, B x 1 x H x W or B x C x H x W (for channels-last images a
    channels-last C-channel mask is much faster on CPU, see ``upsample_cam``);
    ``lam``: a float, a 0-d tensor (one per batch) or a (B,) tensor (one per
    sample). The label of ``x`` is kept.
    """
    if context.shape != x.shape or mask.dim() != 4 or mask.shape[0] != x.shape[0] \
            or mask.shape[1] not in (1, x.shape[1]) or mask.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"fusion needs x and context B x C x H x W and mask B x 1 (or C) x H x W, got "
            f"{tuple(x.shape)}, {tuple(context.shape)}, {tuple(mask.shape)}"
        )
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    if lam.dim() == 1 and lam.shape[0] == x.shape[0]:
        lam = lam.view(-1, 1, 1, 1)
    elif lam.dim() != 0:
        raise ValueError(f"lam must be a scalar or shape ({x.shape[0]},), got {tuple(lam.shape)}")
    return torch.lerp(x, context, lam * mask)


def _standard_gamma_log(concentration: float, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """log of n Gamma(concentration, 1) draws (Marsaglia & Tsang 2000) using only ``generator``.

    ``torch.distributions`` samples from the global RNG and takes no generator, so
    Beta draws would not be reproducible from the run's own stream; this
    rejection sampler is vectorised over the samples and loops only over
    rejection rounds (acceptance > 95%). Shapes below 1 use the boost
    Gamma(a) = Gamma(a + 1) * U^(1/a), kept in log space so tiny shapes do not underflow.
    """
    boost = concentration < 1
    d = (concentration + 1 if boost else concentration) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel():
        z = torch.randn(pending.numel(), generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(pending.numel(), generator=generator, dtype=torch.float64, device=device)
        v = (1 + c * z) ** 3
        log_v = v.clamp_min(1e-300).log()
        ok = (v > 0) & (u.log() < 0.5 * z * z + d - d * v + d * log_v)
        out[pending[ok]] = math.log(d) + log_v[ok]
        pending = pending[~ok]
    if boost:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        out += u.log() / concentration
    return out


def sample_lambda(
    n: int,
    distribution: str = "uniform",
    a: float = 0.0,
    b: float = 1.0,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fusion strengths: ``Uniform(a, b)`` (Eq. 6 is a=0, b=1) or ``Beta(a, b)`` (Fig. 8).

    Shape ``()`` (one lambda for the batch, as released) or ``(n,)`` when ``per_sample``.
    """
    if distribution == "uniform":
        if not 0.0 <= a <= b <= 1.0:
            raise ValueError(f"uniform lambda needs 0 <= a <= b <= 1, got a={a}, b={b}")
    elif distribution == "beta":
        if not (a > 0 and b > 0):
            raise ValueError(f"beta lambda needs a > 0 and b > 0, got a={a}, b={b}")
    else:
        raise ValueError(f"unknown lambda distribution {distribution!r}; known: {', '.join(LAMBDA_DISTRIBUTIONS)}")
    count = n if per_sample else 1
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if distribution == "uniform":
        lam = a + (b - a) * torch.rand(count, generator=generator, dtype=torch.float64, device=gen_device)
    else:
        # Beta = X / (X + Y) = sigmoid(log X - log Y) for X ~ Gamma(a), Y ~ Gamma(b).
        log_x = _standard_gamma_log(a, count, generator, gen_device)
        log_y = _standard_gamma_log(b, count, generator, gen_device)
        lam = torch.sigmoid(log_x - log_y)
    lam = lam.to(device=device if device is not None else gen_device, dtype=torch.get_default_dtype())
    return lam if per_sample else lam.squeeze(0)


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup with a batch permutation: ``lam * x + (1 - lam) * x[perm]``, lam ~ Beta(alpha, alpha).

    ``alpha = 0`` disables mixing (lam = 1), as in the reference implementation.
    Returns ``(x_mixed, y_a, y_b, lam)`` for ``mixup_loss``.
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    lam = float(sample_lambda(1, "beta", alpha, alpha, generator=generator)) if alpha > 0 else 1.0
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(x.shape[0], generator=generator, device=gen_device).to(x.device)
    return torch.lerp(gather_rows(x, perm), x, lam), y, y[perm], lam


def mixup_loss(
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """``lam * criterion(logits, y_a) + (1 - lam) * criterion(logits, y_b)``."""
    return lam * criterion(logits, y_a) + (1 - lam) * criterion(logits, y_b)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """CutMix's box (Yun et al. 2019, Eq. 2 and its release): side ratio sqrt(1 - lam), centre uniform
    over the image, clipped at the borders. Returns rows ``[top, bottom)`` and columns ``[left, right)``."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    cy = int(torch.randint(height, (), generator=generator, device=gen_device))
    cx = int(torch.randint(width, (), generator=generator, device=gen_device))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def paste_box(background: torch.Tensor, foreground: torch.Tensor, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, float]:
    """``background`` with ``foreground``'s box pasted in, and the share of the image left to the
    background (CutMix's adjusted lambda: 1 - box area / image area)."""
    top, bottom, left, right = box
    out = background.clone()
    out[:, :, top:bottom, left:right] = foreground[:, :, top:bottom, left:right]
    return out, 1.0 - (bottom - top) * (right - left) / (background.shape[-2] * background.shape[-1])
