import pytest
import torch
from torch import nn

from tailshift.methods.mixing_ops import fuse_context, mixup, mixup_loss, sample_lambda


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 4, generator=g)
    ctx = torch.randn(2, 3, 4, 4, generator=g)
    mask = torch.rand(2, 1, 4, 4, generator=g)
    return x, ctx, mask


def test_fusion_endpoints():
    x, ctx, mask = _images()
    torch.testing.assert_close(fuse_context(x, ctx, mask, 0.0), x)
    torch.testing.assert_close(fuse_context(x, ctx, torch.ones_like(mask), 1.0), ctx)


def test_fusion_hand_computed_pixel():
    x = torch.full((1, 1, 1, 1), 2.0)
    ctx = torch.full((1, 1, 1, 1), 10.0)
    mask = torch.full((1, 1, 1, 1), 0.5)
    # lam * M = 0.25: 0.25 * 10 + 0.75 * 2 = 4
    assert fuse_context(x, ctx, mask, torch.tensor(0.5)).item() == pytest.approx(4.0)


def test_fusion_formula_and_per_sample_lambda():
    x, ctx, mask = _images()
    lam = torch.tensor([0.2, 0.9])
    out = fuse_context(x, ctx, mask, lam)
    for i in range(2):
        w = lam[i] * mask[i]
        torch.testing.assert_close(out[i], w * ctx[i] + (1 - w) * x[i])
    with pytest.raises(ValueError, match="lam"):
        fuse_context(x, ctx, mask, torch.rand(3))
    with pytest.raises(ValueError, match="mask B x 1 \\(or C\\)"):
        fuse_context(x, ctx, mask.expand(2, 2, 4, 4), 0.5)


def test_fusion_with_a_per_channel_channels_last_mask_equals_the_broadcast_one():
    x, ctx, mask = _images()
    cl = torch.channels_last
    x, ctx = x.contiguous(memory_format=cl), ctx.contiguous(memory_format=cl)
    per_channel = mask.expand(2, 3, 4, 4).contiguous(memory_format=cl)
    out = fuse_context(x, ctx, per_channel, 0.7)
    assert torch.equal(out, fuse_context(x, ctx, mask, 0.7))
    assert out.is_contiguous(memory_format=cl)


def test_uniform_lambda_range_and_mean():
    lam = sample_lambda(20000, "uniform", 0.2, 0.6, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert lam.shape == (20000,)
    assert lam.min() >= 0.2 and lam.max() <= 0.6
    assert lam.mean().item() == pytest.approx(0.4, abs=0.01)


def test_beta_lambda_mean_and_variance():
    lam = sample_lambda(20000, "beta", 2.0, 5.0, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert lam.min() >= 0 and lam.max() <= 1
    assert lam.mean().item() == pytest.approx(2 / 7, abs=0.01)
    assert lam.var().item() == pytest.approx(10 / (49 * 8), abs=0.003)
    small = sample_lambda(20000, "beta", 0.2, 0.3, per_sample=True, generator=torch.Generator().manual_seed(1))
    assert not small.isnan().any() and small.mean().item() == pytest.approx(0.4, abs=0.02)


@pytest.mark.parametrize("dist,a,b", [("uniform", 0.0, 1.0), ("beta", 1.0, 1.0)])
def test_lambda_shape_and_determinism(dist, a, b):
    one = sample_lambda(8, dist, a, b, generator=torch.Generator().manual_seed(4))
    assert one.shape == () and one.dtype == torch.float32
    draws = [sample_lambda(8, dist, a, b, per_sample=True, generator=torch.Generator().manual_seed(4)) for _ in range(2)]
    torch.testing.assert_close(draws[0], draws[1])
    assert draws[0].shape == (8,)


@pytest.mark.parametrize(
    "dist,a,b,message",
    [
        ("uniform", 0.7, 0.3, "0 <= a <= b <= 1, got a=0.7, b=0.3"),
        ("uniform", -0.1, 0.5, "got a=-0.1"),
        ("uniform", 0.0, 1.5, "b=1.5"),
        ("beta", 0.0, 1.0, "a > 0 and b > 0, got a=0.0"),
        ("gauss", 0.0, 1.0, "known: uniform, beta"),
    ],
)
def test_lambda_bad_arguments(dist, a, b, message):
    with pytest.raises(ValueError, match=message.replace("+", "\\+")):
        sample_lambda(4, dist, a, b)


def test_mixup_mixes_pairs_and_loss():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 2).clone()
    y = torch.arange(4)
    xm, y_a, y_b, lam = mixup(x, y, 1.0, torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1 and torch.equal(y_a, y)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[y_b])  # labels index their images here
    again = mixup(x, y, 1.0, torch.Generator().manual_seed(0))
    assert again[3] == lam and torch.equal(again[2], y_b)
    assert mixup(x, y, 0.0)[3] == 1.0
    logits = torch.randn(4, 4)
    ce = nn.CrossEntropyLoss()
    torch.testing.assert_close(
        mixup_loss(ce, logits, y_a, y_b, lam), lam * ce(logits, y_a) + (1 - lam) * ce(logits, y_b)
    )
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, y, -1.0)
