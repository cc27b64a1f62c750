import pytest
import torch
from torch import nn

from tailshift.cam import (
    CamResult,
    background_mask,
    class_activation_map,
    context_masks,
    grad_cam,
    normalize_cam,
    upsample_cam,
)
from tailshift.models import create_model


def _gap_linear(seed=0, c=5, k=4):
    torch.manual_seed(seed)
    fc = nn.Linear(c, k)
    fmap = torch.rand(3, c, 4, 4)
    targets = torch.tensor([0, 3, 1])
    return fc, fmap, targets, (lambda a: fc(a.mean(dim=(2, 3))))


def test_cam_matches_analytic_map():
    fc, fmap, targets, _ = _gap_linear()
    expected = torch.stack(
        [(fc.weight[y][:, None, None] * fmap[i]).sum(0) for i, y in enumerate(targets)]
    )
    torch.testing.assert_close(class_activation_map(fmap, fc.weight, targets), expected.detach())


def test_grad_cam_is_the_relu_of_cam_for_gap_linear():
    fc, fmap, targets, head = _gap_linear()
    result = grad_cam(fmap, head, targets)
    assert isinstance(result, CamResult)
    cam = class_activation_map(fmap, fc.weight, targets)
    h, w = fmap.shape[2:]
    # Exact relation before normalisation: Grad-CAM = ReLU(CAM) / (h * w).
    torch.testing.assert_close(result.cam, torch.relu(cam) / (h * w))
    nonnegative = (cam >= 0).flatten(1).all(1)
    torch.testing.assert_close(normalize_cam(result.cam)[nonnegative], normalize_cam(cam)[nonnegative])
    torch.testing.assert_close(result.logits, head(fmap).detach())
    assert not result.logits.requires_grad


def test_grad_cam_leaves_parameters_alone():
    model = create_model("resnet20").eval()
    fc = nn.Linear(model.out_dim, 10)
    fc.weight.requires_grad_(False)  # a frozen flag must survive too
    flags = {n: p.requires_grad for n, p in [*model.named_parameters(), *fc.named_parameters()]}
    x = torch.randn(2, 3, 32, 32)
    fmap = model.feature_map(x)  # carries a graph into the backbone
    result = grad_cam(fmap, lambda a: fc(model.embed(a)), torch.tensor([1, 2]))
    assert result.cam.shape == (2, 8, 8)
    for name, p in [*model.named_parameters(), *fc.named_parameters()]:
        assert p.grad is None, name
        assert p.requires_grad == flags[name], name


def test_grad_cam_through_the_callers_graph_equals_a_second_head_pass():
    model = create_model("resnet20").train()
    fc = nn.Linear(model.out_dim, 10)
    x, targets = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 9])
    fmap = model.feature_map(x)
    logits = fc(model.embed(fmap))  # a training forward
    with torch.no_grad():
        reused = grad_cam(fmap, None, targets, logits)
    again = grad_cam(fmap, lambda a: fc(model.embed(a)), targets)
    torch.testing.assert_close(reused.cam, again.cam)
    torch.testing.assert_close(reused.logits, logits.detach())
    assert fc.weight.grad is None
    logits.sum().backward()  # the graph survives for the training backward
    assert fc.weight.grad is not None
    with pytest.raises(ValueError, match="autograd recording"):
        grad_cam(fmap.detach(), None, targets, logits.detach())


def test_grad_cam_under_no_grad():
    _, fmap, targets, head = _gap_linear()
    with torch.no_grad():
        cam = grad_cam(fmap, head, targets).cam
    assert cam.shape == (3, 4, 4) and (cam >= 0).all()


def test_normalize_cam_range_and_constant_map():
    cam = torch.stack([torch.arange(16.0).view(4, 4), torch.zeros(4, 4), torch.full((4, 4), 3.0)])
    out = normalize_cam(cam)
    assert not out.isnan().any()
    assert out[0].min() == 0 and out[0].max() == 1
    assert (out[1:] == 0).all()


def test_upsample_and_mask_shapes_and_range():
    cam = normalize_cam(torch.rand(2, 4, 4))
    up = upsample_cam(cam, 16)
    assert up.shape == (2, 1, 16, 16)
    assert up.min() >= 0 and up.max() <= 1
    torch.testing.assert_close(background_mask(up, power=2.0), (1 - up) ** 2)
    with pytest.raises(ValueError, match="power"):
        background_mask(up, power=0)


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_context_masks(method):
    fc, fmap, targets, head = _gap_linear()
    mask, logits = context_masks(fmap, head, targets, (12, 10), method=method, classifier_weight=fc.weight)
    assert mask.shape == (3, 1, 12, 10)
    assert mask.min() >= 0 and mask.max() <= 1
    assert (logits is None) == (method == "cam")


def test_context_masks_constant_feature_map_gives_no_nan():
    fc, fmap, targets, head = _gap_linear()
    mask, _ = context_masks(torch.zeros_like(fmap), head, targets, 8, power=2.0)
    assert not mask.isnan().any()
    assert (mask == 1).all()  # zero cam: everything is context


def test_context_masks_bad_method():
    _, fmap, targets, head = _gap_linear()
    with pytest.raises(ValueError, match="known: gradcam, cam"):
        context_masks(fmap, head, targets, 8, method="scorecam")
    with pytest.raises(ValueError, match="classifier_weight"):
        context_masks(fmap, head, targets, 8, method="cam")


def test_matmul_upsampling_equals_bicubic_interpolate():
    import torch.nn.functional as F

    from tailshift.cam import upsample_cam

    for h, size in ((5, 28), (8, 32), (7, (20, 30))):
        cam = torch.rand(4, h, h)
        ref = F.interpolate(cam[:, None], size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        torch.testing.assert_close(upsample_cam(cam, size), ref, atol=1e-6, rtol=0)


def test_per_channel_upsampling_repeats_the_map_in_channels_last_memory():
    cam = torch.rand(4, 5, 5)
    one = upsample_cam(cam, (28, 20))
    three = upsample_cam(cam, (28, 20), channels=3)
    assert three.shape == (4, 3, 28, 20)
    assert three.is_contiguous(memory_format=torch.channels_last)
    for c in range(3):
        torch.testing.assert_close(three[:, c], one[:, 0], atol=1e-6, rtol=0)
    fc, fmap, targets, head = _gap_linear()
    mask, _ = context_masks(fmap, head, targets, 8, power=2.0, channels=3)
    assert mask.shape == (3, 3, 8, 8) and mask.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels must be >= 1, got 0"):
        upsample_cam(cam, 8, channels=0)


def test_cam_without_relu_differs_from_grad_cam_where_the_weighted_sum_is_negative():
    # the release's CAM branch has no ReLU (Table 8): a map with a negative part keeps
    # its ordering there, while Grad-CAM flattens it to zero
    fc = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
    fmap = torch.zeros(1, 2, 2, 2)
    fmap[0, 0] = torch.tensor([[3.0, 1.0], [0.0, 0.0]])
    fmap[0, 1] = torch.tensor([[0.0, 0.0], [1.0, 2.0]])  # weighted sum: [[3, 1], [-1, -2]]
    targets = torch.tensor([0])
    cam = normalize_cam(class_activation_map(fmap, fc.weight, targets))
    gradcam = normalize_cam(grad_cam(fmap, lambda a: fc(a.mean(dim=(2, 3))), targets).cam)
    torch.testing.assert_close(cam[0], torch.tensor([[1.0, 0.6], [0.2, 0.0]]))
    torch.testing.assert_close(gradcam[0], torch.tensor([[1.0, 1 / 3], [0.0, 0.0]]))
    mask_cam, _ = context_masks(fmap, None, targets, 2, "cam", 1.0, fc.weight)
    mask_grad, _ = context_masks(fmap, lambda a: fc(a.mean(dim=(2, 3))), targets, 2, "gradcam", 1.0)
    assert not torch.allclose(mask_cam, mask_grad)


def test_cams_and_masks_are_float32_under_bf16_autocast():
    fc, fmap, targets, head = _gap_linear()
    exact_cam = grad_cam(fmap, head, targets).cam
    exact_mask, _ = context_masks(fmap, head, targets, 16, power=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cam = grad_cam(fmap, head, targets).cam
        mask, logits = context_masks(fmap, head, targets, 16, power=2.0)
        plain = class_activation_map(fmap, fc.weight, targets)
    assert cam.dtype == mask.dtype == logits.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(cam, exact_cam, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mask, exact_mask, rtol=1e-6, atol=1e-6)


def test_fp16_grad_cam_of_tiny_gradients_does_not_underflow_to_an_all_ones_mask():
    """Gradients of about 6e-9 flush to zero in fp16: the objective is scaled before the backward."""
    torch.manual_seed(0)
    weight = torch.randn(4, 5) * 1e-7
    fmap32 = torch.rand(3, 5, 4, 4)
    targets = torch.tensor([0, 3, 1])
    fmap16 = fmap32.half().requires_grad_(True)
    logits16 = fmap16.mean(dim=(2, 3)) @ weight.half().t()  # a training forward's fp16 graph
    mask, _ = context_masks(fmap16, None, targets, 8, logits=logits16)
    weight16 = weight.half().float()  # the same (fp16-rounded) numbers in float32
    reference, _ = context_masks(fmap32.half().float(), lambda a: a.mean(dim=(2, 3)) @ weight16.t(), targets, 8)
    assert mask.dtype == torch.float32
    assert (mask < 0.99).any(), "an all-ones mask: the CAM underflowed"
    torch.testing.assert_close(mask, reference, atol=1e-5, rtol=0)
