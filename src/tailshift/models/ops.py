"""Hand-written CPU hot path of LeNet-2d (one thread, channels-last, batch 128).

Measured with ``benchmarks/lenet_step.py`` (2-core AMD EPYC, torch 2.13 CPU):
dropping any one piece below costs 7-26 % of a training step (1 or 3 input
channels); each computes the same function as the plain ``nn.Conv2d`` /
``nn.MaxPool2d`` version, gradients equal up to float rounding:

* ``conv5x5_pad2_s2dw``: oneDNN's kernels vectorise over output channels and
  are slow for 1-3 input channels. Folding column pairs into channels
  ("space-to-depth along W") turns the 5x5, C->6 convolution into a 5x3,
  2C->12 one with the same products. For channels-last inputs the folded input
  and the unfolded output are free views of the original memory.
* ``relu_max_pool2x2``: 2x2/2 max pool fused with the ReLU that follows it,
  built from strided views (``aten::max_pool2d_with_indices`` is slow with 6
  channels, and its backward zero-fills the whole input gradient first).
* ``conv2d_s2dh_input_grad``: same convolution forward and weight gradient as
  ``F.conv2d``; only the input gradient (oneDNN's slowest call here, its
  output has just 6 channels) goes through the row-pair-folded convolution.

Measured and dropped (< 5 % or slower): the folded input gradient in NCHW
(+1-2 %), row- or 2x2-folding the whole second convolution or the first
(layout copies eat the gain), this pool for the 16-channel second stage, the
4 pooling phases as batch entries of a stride-2 convolution, unfold + matmul
(MKL's small GEMMs are slow on this CPU), and ``torch.backends.mkldnn``
disabled (2x slower). Use these only on CPU; ``LeNet2d`` falls back to the
plain modules elsewhere.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_INDEX_CACHE: dict[tuple, torch.Tensor] = {}


def _fold_index(kind: str, out_ch: int, in_ch: int, k: int, device: torch.device) -> torch.Tensor:
    """Gather index (into ``cat(weight.flatten(), [0])``) of a pair-folded k x k kernel.

    ``kind == "w"``: column pairs; out channel (dj, o), in channel (qw, c), kernel k x (k+1)/2,
    entry ``W[o, c, u, 2 * pw + qw - dj]``. ``kind == "h"``: row pairs, the transpose of that.
    Taps outside the original kernel point at the trailing zero.
    """
    key = (kind, out_ch, in_ch, k, device)
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        idx = _INDEX_CACHE[key] = _build_fold_index(kind, out_ch, in_ch, k, device)
    return idx


@torch.inference_mode(False)  # a first call during evaluation must still cache a tensor autograd may save
def _build_fold_index(kind: str, out_ch: int, in_ch: int, k: int, device: torch.device) -> torch.Tensor:
    half = (k + 2) // 2
    zero = out_ch * in_ch * k * k
    shape = (2 * out_ch, 2 * in_ch, k, half) if kind == "w" else (2 * out_ch, 2 * in_ch, half, k)
    idx = torch.full(shape, zero, dtype=torch.long)
    ranges = (range(2), range(out_ch), range(2), range(in_ch), range(k), range(half))
    for d, o, q, c, a, p in itertools.product(*ranges):
        t = 2 * p + q - d  # tap along the folded axis
        if 0 <= t < k:
            u, v = (a, t) if kind == "w" else (t, a)
            pos = (d * out_ch + o, q * in_ch + c, a, p) if kind == "w" else (d * out_ch + o, q * in_ch + c, p, a)
            idx[pos] = ((o * in_ch + c) * k + u) * k + v
    return idx.to(device)


def fold_weight(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The pair-folded (``"w"``: columns, ``"h"``: rows) version of a square conv kernel; differentiable."""
    out_ch, in_ch, k, _ = weight.shape
    idx = _fold_index(kind, out_ch, in_ch, k, weight.device)
    flat = torch.cat([weight.reshape(-1), weight.new_zeros(1)])
    return flat[idx].contiguous(memory_format=torch.channels_last)


def conv5x5_pad2_s2dw(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=2)`` for a 5x5 kernel and an even width, channels-last out.

    Output column 2j + dj of channel o is channel dj * O + o, column j of a 5x3
    convolution over the column-pair-folded input (channel qw * C + c holds input
    column 2j + qw); padding 2 columns becomes padding 1 folded column.
    """
    n, c, h, w = x.shape
    out_ch = weight.shape[0]
    xs = x.permute(0, 2, 3, 1).reshape(n, h, w // 2, 2 * c).permute(0, 3, 1, 2)  # a view for NHWC memory
    y = F.conv2d(xs, fold_weight(weight, "w"), torch.cat([bias, bias]), padding=(2, 1))
    return y.permute(0, 2, 3, 1).reshape(n, h, w, out_ch).permute(0, 3, 1, 2)  # a view when y is channels-last


class _ReLUMaxPool2x2(torch.autograd.Function):
    """relu(max_pool2d(x, 2)) for even H and W; gradient to the first maximum of each window.

    Forward: a maximum over column pairs, then over row pairs. Among tied values the
    window element that comes first in row-major order wins, exactly as in
    ``max_pool2d`` (column pairs keep the left one unless the right is strictly
    greater, row pairs keep the upper one likewise), so gradients match the
    reference including ties such as all-zero regions. The two "strictly greater"
    decisions are kept as 0/1 float masks (float compares and multiplies are
    vectorised; bool ones and ``torch.where`` are not on this build), and the
    backward splits the gradient with a multiply and an exact subtraction.
    NaNs propagate in the forward, but their gradient routing may differ.
    """

    @staticmethod
    def forward(ctx, x):
        cols = x.unflatten(3, (x.shape[3] // 2, 2))
        left, right = cols[..., 0], cols[..., 1]
        rowmax = torch.maximum(left, right)  # N x C x H x W/2, laid out like x
        rows = rowmax.unflatten(2, (x.shape[2] // 2, 2))
        top, bottom = rows[:, :, :, 0], rows[:, :, :, 1]
        out = torch.empty(top.shape, dtype=x.dtype, device=x.device, memory_format=_format(x))
        torch.maximum(top, bottom, out=out)
        out.clamp_min_(0)
        if ctx.needs_input_grad[0]:
            right_wins = torch.gt(right, left, out=torch.empty_like(rowmax))
            bottom_wins = torch.gt(bottom, top, out=torch.empty_like(out))
            ctx.save_for_backward(out, right_wins, bottom_wins)
            ctx.input_format = _format(x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        out, right_wins, bottom_wins = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, out, 0)  # the ReLU
        grad_rows = torch.empty_like(right_wins)
        rows = grad_rows.unflatten(2, (out.shape[2], 2))
        torch.mul(grad, bottom_wins, out=rows[:, :, :, 1])
        torch.sub(grad, rows[:, :, :, 1], out=rows[:, :, :, 0])
        n, c, h, w = right_wins.shape
        grad_in = torch.empty((n, c, h, 2 * w), dtype=grad.dtype, device=grad.device, memory_format=ctx.input_format)
        cols = grad_in.unflatten(3, (w, 2))
        torch.mul(grad_rows, right_wins, out=cols[..., 1])
        torch.sub(grad_rows, cols[..., 1], out=cols[..., 0])
        return grad_in


def _format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def relu_max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.relu(F.max_pool2d(x, 2))`` (N x C x H x W, any layout; odd edges dropped like max_pool2d)."""
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    if h == 0 or w == 0 or x.shape[0] == 0 or x.shape[1] == 0:
        return F.relu(F.max_pool2d(x, 2))
    if (h, w) != tuple(x.shape[2:]):
        x = x[:, :, :h, :w]
    return _ReLUMaxPool2x2.apply(x)


class _Conv2dS2DHInputGrad(torch.autograd.Function):
    """``F.conv2d(x, weight, bias)`` (stride 1, no padding, even input and output height).

    The input gradient is computed as that of the row-pair-folded convolution
    (input channel qh * C + c holds row 2I + qh; output channel di * O + o holds
    output row 2I + di), whose 12 input channels suit oneDNN far better than 6.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        out_ch, in_ch = weight.shape[:2]
        n, _, oh, ow = grad.shape
        h, w = x.shape[2:]
        cb = torch.ops.aten.convolution_backward
        grad_x = None
        if ctx.needs_input_grad[0]:
            folded = torch.empty((n, oh // 2, ow, 2, out_ch), dtype=grad.dtype, device=grad.device)
            folded.copy_(grad.permute(0, 2, 3, 1).unflatten(1, (oh // 2, 2)).transpose(2, 3))
            folded = folded.view(n, oh // 2, ow, 2 * out_ch).permute(0, 3, 1, 2)
            cl = torch.channels_last
            shape_only = torch.empty((n, 2 * in_ch, h // 2, w), dtype=x.dtype, device=x.device, memory_format=cl)
            gxs = cb(folded, shape_only, fold_weight(weight, "h"), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                     [True, False, False])[0]
            grad_x = torch.empty((n, in_ch, h, w), dtype=x.dtype, device=x.device, memory_format=cl)
            grad_x.permute(0, 2, 3, 1).unflatten(1, (h // 2, 2)).copy_(
                gxs.permute(0, 2, 3, 1).unflatten(3, (2, in_ch)).transpose(2, 3))
        _, grad_w, grad_b = cb(grad, x, weight, [out_ch], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                               [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_w, grad_b


def conv2d_s2dh_input_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` with the faster input gradient (stride 1, no padding, even heights)."""
    if x.shape[2] % 2 or (x.shape[2] - weight.shape[2] + 1) % 2 or weight.shape[2] != weight.shape[3] or bias is None \
            or torch.is_autocast_enabled(x.device.type):  # the float32 kernel's trick; autocast picks its own dtype
        return F.conv2d(x, weight, bias)
    return _Conv2dS2DHInputGrad.apply(x, weight, bias)
