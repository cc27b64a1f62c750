"""The hand-written LeNet-2d ops against the plain PyTorch ops they replace.

Tie rule (checked exactly below): when several elements of a 2x2 window share
the maximum, the whole gradient goes to the first of them in row-major window
order (top-left, top-right, bottom-left, bottom-right), which is what
``F.max_pool2d`` does on CPU; no other element gets any. So pooling gradients
must be *identical* to the reference, not just close.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tailshift.cam import grad_cam
from tailshift.models import create_model
from tailshift.models.lenet import LeNet2d
from tailshift.models.ops import conv2d_s2dh_input_grad, conv5x5_pad2_s2dw, fold_weight, relu_max_pool2x2

FORMATS = [torch.contiguous_format, torch.channels_last]


def _reference_pool(x):
    return F.relu(F.max_pool2d(x, 2))


def _pool_both(x, grad):
    """(out, grad_in) of the new op and of the reference on copies of ``x``."""
    results = []
    for fn in (relu_max_pool2x2, _reference_pool):
        xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        out = fn(xi)
        out.backward(grad)
        results.append((out.detach(), xi.grad))
    return results


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("shape", [(4, 6, 28, 28), (3, 16, 10, 10), (2, 5, 7, 9), (1, 3, 3, 2)])
def test_pool_matches_reference_random(memory_format, shape):
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    out_shape = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    grad = torch.randn(out_shape).contiguous(memory_format=memory_format)
    (out, gx), (ref_out, ref_gx) = _pool_both(x, grad)
    assert out.shape == ref_out.shape
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(gx, ref_gx, rtol=0, atol=0)
    assert gx.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", FORMATS)
def test_pool_ties_route_like_reference(memory_format):
    torch.manual_seed(1)
    # Few distinct values -> most windows hold ties; plus all-zero and all-equal regions.
    x = torch.randint(-2, 3, (4, 6, 12, 12)).float()
    x[0] = 0.0
    x[1, :, :6] = 1.5
    x[2, :, :, :4] = -1.0  # ties below zero: no gradient through the ReLU
    x = x.contiguous(memory_format=memory_format)
    grad = torch.randn(4, 6, 6, 6).contiguous(memory_format=memory_format)
    (out, gx), (ref_out, ref_gx) = _pool_both(x, grad)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(gx, ref_gx, rtol=0, atol=0)


@pytest.mark.parametrize("window", [
    [[1.0, 1.0], [1.0, 1.0]],  # all tied: top-left
    [[0.0, 2.0], [2.0, 2.0]],  # top-right before the bottom row
    [[0.0, 1.0], [2.0, 2.0]],  # bottom-left before bottom-right
    [[0.0, 1.0], [1.0, 0.5]],  # top-right before bottom-left
    [[0.0, 0.0], [0.0, 0.0]],  # zero maximum: ReLU passes no gradient
])
def test_pool_tie_rule_single_window(window):
    x = torch.tensor(window).view(1, 1, 2, 2)
    grad = torch.full((1, 1, 1, 1), 3.0)
    (_, gx), (_, ref_gx) = _pool_both(x, grad)
    torch.testing.assert_close(gx, ref_gx, rtol=0, atol=0)
    assert (gx != 0).sum() <= 1


def test_pool_without_grad_and_under_inference_mode():
    x = torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = relu_max_pool2x2(x)
    torch.testing.assert_close(out, _reference_pool(x), rtol=0, atol=0)
    assert not relu_max_pool2x2(x).requires_grad


def assert_same_conv(new_fn, reference_fn, x, w, b, grad):
    """Output and the gradients of input, weight and bias agree with the reference convolution."""
    results = []
    for fn in (new_fn, reference_fn):
        xi, wi, bi = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        out = fn(xi, wi, bi)
        out.backward(grad)
        results.append((out.detach(), xi.grad, wi.grad, bi.grad))
    for new, ref in zip(*results):
        torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_folded_first_conv_matches_conv2d(memory_format, in_channels):
    torch.manual_seed(2)
    x = torch.randn(4, in_channels, 28, 28).contiguous(memory_format=memory_format)
    w = torch.randn(6, in_channels, 5, 5).contiguous(memory_format=memory_format)
    b = torch.randn(6)
    grad = torch.randn(4, 6, 28, 28)
    assert_same_conv(conv5x5_pad2_s2dw, lambda x, w, b: F.conv2d(x, w, b, padding=2), x, w, b, grad)


@pytest.mark.parametrize("memory_format", FORMATS)
def test_second_conv_input_grad_matches_conv2d(memory_format):
    torch.manual_seed(3)
    x = torch.randn(4, 6, 14, 14).contiguous(memory_format=memory_format)
    w = torch.randn(16, 6, 5, 5).contiguous(memory_format=memory_format)
    b = torch.randn(16)
    grad = torch.randn(4, 16, 10, 10)
    assert_same_conv(conv2d_s2dh_input_grad, F.conv2d, x, w, b, grad)


def test_fold_weight_keeps_every_tap_once():
    w = torch.arange(1.0, 1 + 16 * 6 * 25).view(16, 6, 5, 5)
    for kind, shape in (("w", (32, 12, 5, 3)), ("h", (32, 12, 3, 5))):
        folded = fold_weight(w, kind)
        assert folded.shape == shape
        # Each output phase holds every original tap exactly once; the rest are zeros.
        for phase in range(2):
            taps = folded[phase * 16:(phase + 1) * 16]
            assert sorted(taps[taps != 0].tolist()) == sorted(w.flatten().tolist())


def _model_pair(in_channels, image_size=28):
    torch.manual_seed(4)
    fast = LeNet2d(in_channels, image_size).to(memory_format=torch.channels_last)
    ref = LeNet2d(in_channels, image_size).to(memory_format=torch.channels_last)
    ref.load_state_dict(fast.state_dict())
    ref.use_fast_path = False
    return fast, ref


@pytest.mark.parametrize("in_channels,image_size", [(1, 28), (3, 28), (3, 32)])
def test_lenet_fast_path_matches_plain_modules(in_channels, image_size):
    fast, ref = _model_pair(in_channels, image_size)
    head = nn.Linear(2, 10)
    torch.manual_seed(5)
    x = torch.randn(32, in_channels, image_size, image_size)
    x[:4] = 0  # all-zero images: every window of the first stage is a tie
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))
    outs = []
    for model in (fast, ref):
        model.zero_grad()
        fmap = model.feature_map(x)
        loss = F.cross_entropy(head(model.embed(fmap)), y)
        loss.backward()
        outs.append((fmap.detach(), loss.detach(), [p.grad for p in model.parameters()]))
    (fmap, loss, grads), (ref_fmap, ref_loss, ref_grads) = outs
    side = ((image_size // 2) - 4) // 2
    assert fmap.shape == (32, 16, side, side)
    torch.testing.assert_close(fmap, ref_fmap, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-5)


def test_lenet_interface_and_state_dict_unchanged():
    model = create_model("lenet2d", in_channels=3, image_size=28)
    assert model.out_dim == 2 and not model.pooled_linear and not model.mode_dependent
    assert list(model.state_dict()) == [
        "stage1.0.weight", "stage1.0.bias", "stage2.0.weight", "stage2.0.bias",
        "fc.1.weight", "fc.1.bias", "fc.3.weight", "fc.3.bias", "fc.5.weight", "fc.5.bias",
    ]
    with torch.inference_mode():
        fmap = model.feature_map(torch.randn(2, 3, 28, 28).contiguous(memory_format=torch.channels_last))
    assert fmap.shape == (2, 16, 5, 5)


def test_lenet_feature_map_supports_grad_cam():
    fast, ref = _model_pair(1)
    head = nn.Linear(2, 10)
    x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (8,))
    grads, cams = [], []
    for model in (fast, ref):
        fmap = model.feature_map(x)
        logits = head(model.embed(fmap))
        (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), fmap)
        grads.append(g)
        cams.append(grad_cam(fmap, lambda a, m=model: head(m.embed(a)), targets).cam)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cams[0], cams[1], rtol=1e-4, atol=1e-5)


def test_gradcheck_in_double():
    torch.manual_seed(6)
    # Distinct values (no ties, no zeros): max pooling is differentiable there.
    x = (torch.randperm(2 * 3 * 6 * 4).double().view(2, 3, 6, 4) - 60).div(7).requires_grad_(True)
    assert torch.autograd.gradcheck(relu_max_pool2x2, (x,))
    x1 = torch.randn(2, 2, 6, 6, dtype=torch.double, requires_grad=True)
    w1 = torch.randn(3, 2, 5, 5, dtype=torch.double, requires_grad=True)
    b1 = torch.randn(3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(conv5x5_pad2_s2dw, (x1, w1, b1))
    x2 = torch.randn(2, 2, 8, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(conv2d_s2dh_input_grad, (x2, w1, b1))
