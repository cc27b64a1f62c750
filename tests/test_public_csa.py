"""tailshift.csa.ContextShift: in a loop of one's own, exactly the bank and fused batches of the CSA method."""
import numpy as np
import pytest
import torch

from tailshift.csa import ContextShift
from tailshift.data.pipeline import Batch
from tailshift.methods import METHODS, StepContext
from tailshift.models import create_model

COUNTS = np.array([60, 40, 30, 20, 15, 10, 10, 6, 5, 4])
B = 16


def batches(steps, seed=1):
    g = torch.Generator().manual_seed(seed)

    def one():
        x = (0.1 * torch.randn(B, 3, 28, 28, generator=g)).contiguous(memory_format=torch.channels_last)
        return Batch(x, torch.randint(10, (B,), generator=g), torch.arange(B))

    return [(one(), one()) for _ in range(steps)]


@pytest.mark.parametrize("model,params", [
    ("lenet2d", {}),  # no batch norm: CSA reuses the training forward's map, so does the loop
    ("resnet32", {}),  # batch norm, the release's eval-mode CAM: an extra forward in eval mode
    ("resnet32", {"cam_mode": "train", "lam_distribution": "beta", "lam_a": 2.0, "lam_b": 3.0, "lam_per_sample": True,
                  "mask_power": 1.0}),
    ("resnet32", {"cam": "cam"}),
])
def test_the_loop_gets_what_the_csa_method_computes(model, params):
    torch.manual_seed(0)
    backbone = create_model(model, in_channels=3, image_size=28)
    method = METHODS.get("csa")(backbone, 10, COUNTS, 5, {"warmup_epochs": 0, "delta": 0.1, **params})
    method = method.to(memory_format=torch.channels_last).train()
    with torch.no_grad():  # milder logits at initialisation: about half the samples reach delta
        method.uniform_head.weight.mul_(0.05)
    settings = {k: v for k, v in params.items() if k != "cam_mode"}
    shift = ContextShift(B, delta=0.1, **settings)
    method_gen, loop_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)

    def head(fmap):
        return method.uniform_head(backbone.embed(fmap))

    fused_steps = pushed = 0
    for step, (uniform, balanced) in enumerate(batches(6)):
        fmap = backbone.feature_map(uniform.x)  # the training forward of the uniform branch
        logits = head(fmap)
        ctx = StepContext(method.stages()[0], 0, 0, step, method_gen)
        expected, logs = method.balanced_input(uniform, balanced, fmap, logits, False, ctx)

        if model == "lenet2d" or params.get("cam_mode") == "train":  # the training forward's map and graph
            confident = shift.update(fmap, head, uniform.x, uniform.y, method.uniform_head.weight, logits)
        else:  # the release: the map in eval mode (batch-norm running statistics)
            backbone.eval()
            confident = shift.update(backbone.feature_map, head, uniform.x, uniform.y, method.uniform_head.weight)
            backbone.train()
        assert float(logs["pushed"]) == int(confident.sum())
        pushed += int(confident.sum())
        assert shift.ready == bool(logs["fused"])
        if shift.ready:
            assert torch.equal(shift.fuse(balanced.x, loop_gen), expected)
            fused_steps += 1
        else:
            assert expected is None
    assert 0 < fused_steps < 6  # the bank filled only after a few steps: both phases were compared
    assert 0 < pushed < 6 * B  # delta kept some samples out
    for ours, theirs in zip(shift.bank.contents(), method.bank.contents()):
        assert torch.equal(ours, theirs)


def test_a_loaded_state_continues_exactly():
    backbone = create_model("lenet2d", in_channels=3, image_size=28)
    head = torch.nn.Linear(backbone.out_dim, 10)

    def classify(fmap):
        return head(backbone.embed(fmap))

    steps = batches(4)
    shift = ContextShift(24, delta=0.0)
    for uniform, _ in steps[:2]:
        shift.update(backbone.feature_map, classify, uniform.x, uniform.y)
    restored = ContextShift(24, delta=0.0)
    restored.load_state_dict(shift.state_dict())
    assert len(restored) == len(shift) == 24
    for uniform, balanced in steps[2:]:
        fused = []
        for s in (shift, restored):
            s.update(backbone.feature_map, classify, uniform.x, uniform.y)
            fused.append(s.fuse(balanced.x, torch.Generator().manual_seed(3)))
        assert torch.equal(*fused)
    shift.clear()
    assert len(shift) == 0 and not shift.ready


def test_fuse_needs_a_full_bank():
    with pytest.raises(RuntimeError, match=r"needs a full context bank \(it holds 0 of 8\)"):
        ContextShift(8).fuse(torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize("kwargs,fragment", [
    ({"capacity": 0}, "ContextShift capacity must be an int >= 1, got 0"),
    ({"capacity": 4, "delta": 1.5}, "ContextShift delta must be in [0, 1], got 1.5"),
    ({"capacity": 4, "delta": "high"}, "ContextShift delta must be a finite number, got 'high'"),
    ({"capacity": 4, "mask_power": 0.0}, "ContextShift mask_power must be > 0, got 0.0"),
    ({"capacity": 4, "cam": "scorecam"}, "ContextShift cam must be one of gradcam, cam; got 'scorecam'"),
    ({"capacity": 4, "lam_distribution": "normal"}, "ContextShift lam_distribution must be one of uniform, beta"),
    ({"capacity": 4, "lam_a": 0.6, "lam_b": 0.4}, "lam_a, lam_b must satisfy 0 <= lam_a <= lam_b <= 1"),
    ({"capacity": 4, "lam_distribution": "beta", "lam_a": 0.0}, "lam_a, lam_b must both be > 0 for a beta lambda"),
    ({"capacity": 4, "lam_b": float("nan")}, "ContextShift lam_b must be a finite number, got nan"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as refused:
        ContextShift(**kwargs)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)


def test_plain_cam_needs_the_classifier_weight():
    with pytest.raises(ValueError, match="cam='cam' needs update"):
        ContextShift(4, cam="cam").update(torch.zeros(2, 4, 2, 2), None, torch.zeros(2, 3, 8, 8), torch.zeros(2).long())
