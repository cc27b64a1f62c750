import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tailshift.methods.csa as csa
from conftest import fit_until_interrupted, tiny_prepared
from tailshift.config import build_config
from tailshift.data.pipeline import Batch
from tailshift.engine import Trainer, train
from tailshift.methods import METHODS, StepContext
from tailshift.methods.base import StreamRequest
from tailshift.models import create_model
from tailshift.tensors import is_channels_last

COUNTS = np.array([60, 40, 30, 20, 15, 10, 10, 6, 5, 4])
B = 16


def _method(name="csa", model="lenet2d", epochs=20, **params):
    torch.manual_seed(0)
    backbone = create_model(model, in_channels=3, image_size=28)
    method = METHODS.get(name)(backbone, 10, COUNTS, epochs, params)
    return method.to(memory_format=torch.channels_last)  # as the engine does


def _batches(method, seed=0, n=B):
    g = torch.Generator().manual_seed(seed)

    def one():
        x = torch.randn(n, 3, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
        return Batch(x, torch.randint(10, (n,), generator=g), torch.arange(n))

    return {"uniform": one(), "balanced": one()}


def _ctx(method, epoch, step=0, seed=0):
    return StepContext(method.stages()[0], 0, epoch, step, torch.Generator().manual_seed(seed))


def _step(method, epoch, seed=0, backward=True):
    method.train()
    method.zero_grad(set_to_none=True)
    out = method.training_step(_batches(method, seed), _ctx(method, epoch, seed=seed))
    if backward:
        out.loss.backward()
    return out


def _count_feature_maps(method):
    calls = []
    original = method.backbone.feature_map

    def counted(x):
        calls.append(x)
        return original(x)

    method.backbone.feature_map = counted
    return calls


# --- parameters -----------------------------------------------------------------
@pytest.mark.parametrize(
    "params,name",
    [
        ({"delta": 1.5}, "delta"),
        ({"delta": -0.1}, "delta"),
        ({"bank_multiple": 0}, "bank_multiple"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"mask_power": 0.0}, "mask_power"),
        ({"cam": "scorecam"}, "cam"),
        ({"cam_mode": "both"}, "cam_mode"),
        ({"driver": "power"}, "driver"),
        ({"balanced_stream": "reversed"}, "balanced_stream"),
        ({"balanced_q": 1.5}, "balanced_q"),
        ({"balanced_q": -0.1}, "balanced_q"),
        ({"uniform_loss": "magic"}, "uniform_loss"),
        ({"balanced_loss": "magic"}, "balanced_loss"),
        ({"lam_a": 0.6, "lam_b": 0.2}, "lam_a"),
        ({"lam_distribution": "beta", "lam_a": 0.0}, "lam_a"),
        ({"lam_distribution": "gauss"}, "lam_distribution"),
    ],
)
def test_bad_params_fail_with_one_line(params, name):
    with pytest.raises(ValueError, match=f"method.params.{name}") as err:
        _method(**params)
    assert "\n" not in str(err.value)


def test_unknown_param_rejected():
    with pytest.raises(ValueError, match="unknown method.params.volume"):
        _method(volume=3)


def test_streams_follow_driver_and_balanced_stream():
    stage = _method().stages()[0]
    assert stage.driver == "uniform" and stage.stream_order() == ["uniform", "balanced"]
    assert stage.streams["balanced"].role == "balanced"
    stage = _method(driver="balanced", balanced_stream="uniform").stages()[0]
    assert stage.driver == "balanced" and stage.stream_order() == ["balanced", "uniform"]
    assert stage.streams["balanced"].role == "uniform"
    stage = _method(balanced_stream="power", balanced_q=0.25).stages()[0]
    assert stage.streams["balanced"] == StreamRequest("power", 0.25)


def test_cam_needs_pooled_linear_backbone():
    with pytest.raises(ValueError, match="LeNet2d") as err:
        _method(cam="cam")
    assert "\n" not in str(err.value)
    method = _method(model="resnet20", cam="cam", delta=0.0, warmup_epochs=0)
    out = _step(method, 0)
    assert out.logs["pushed"] == B and out.logs["fused"] == 1.0


# --- context extraction ---------------------------------------------------------------
def test_delta_filter():
    method = _method(delta=0.0, warmup_epochs=0)
    out = _step(method, 0)
    assert len(method.bank) == B and method.bank.capacity == B
    assert out.logs["pushed"] == B
    method = _method(delta=1.0, warmup_epochs=0)
    method.params.delta = 1.01  # beyond the valid range on purpose: no probability reaches it
    out = _step(method, 0)
    assert len(method.bank) == 0 and out.logs["pushed"] == 0
    assert out.logs["fused"] == 0.0 and out.logs["loss_balanced"] == 0


@pytest.mark.parametrize("model", ["lenet2d", "resnet20"])
@pytest.mark.parametrize("cam_mode", ["eval", "train"])
def test_extraction_leaks_no_gradient_and_no_state(model, cam_mode):
    method = _method(model=model, cam_mode=cam_mode)
    method.train()
    batch = _batches(method)["uniform"]
    buffers = {k: v.clone() for k, v in method.state_dict().items()}
    mask, confident = method.extract_contexts(batch.x, batch.y, None)
    assert all(p.grad is None for p in method.parameters())
    assert all(m.training for m in method.modules())
    for key, value in method.state_dict().items():
        torch.testing.assert_close(value, buffers[key], rtol=0, atol=0)
    # channels-last batches get per-channel channels-last masks (one map repeated), for a fast fusion
    channels = batch.x.shape[1] if is_channels_last(batch.x) else 1
    assert mask.shape == (B, channels, *batch.x.shape[-2:]) and not mask.requires_grad
    assert torch.equal(mask, mask[:, :1].expand_as(mask))
    assert confident.shape == (B,) and confident.dtype == torch.bool
    # Reusing a training forward (map and logits carry gradient) leaks nothing either,
    # and leaves that forward's graph intact for the training backward.
    fmap = method.backbone.feature_map(batch.x)
    logits = method.uniform_head(method.backbone.embed(fmap))
    reused, reused_confident = method.extract_contexts(batch.x, batch.y, (fmap, logits))
    assert not reused.requires_grad
    assert all(p.grad is None for p in method.parameters())
    if model == "lenet2d" or cam_mode == "train":  # same forward as the extra one: same masks
        torch.testing.assert_close(reused, mask)
        assert torch.equal(reused_confident, confident)
    logits.sum().backward()
    assert method.uniform_head.weight.grad is not None


@pytest.mark.parametrize(
    "model,params,epoch,expected",
    [
        ("lenet2d", {}, 0, 2),  # no BN: the training map serves the CAM in eval mode too
        ("resnet20", {}, 0, 3),  # BN, eval mode: an extra forward
        ("resnet20", {"cam_mode": "train"}, 0, 2),
        ("lenet2d", {"mixup_alpha": 1.0}, 0, 3),  # mixed training forward: the CAM needs clean images
        ("lenet2d", {"mixup_alpha": 1.0}, 17, 2),  # mixup off in the last 3 of 20 epochs
    ],
)
def test_feature_map_forwards_per_step(model, params, epoch, expected):
    method = _method(model=model, delta=0.0, warmup_epochs=0, **params)
    calls = _count_feature_maps(method)
    out = _step(method, epoch)
    assert out.logs["fused"] == 1.0
    assert len(calls) == expected


def test_train_mode_cam_with_mixup_keeps_running_stats():
    method = _method(model="resnet20", cam_mode="train", mixup_alpha=1.0, delta=0.0, warmup_epochs=0)
    method.train()
    batch = _batches(method)["uniform"]
    before = method.backbone.stem[1].running_mean.clone()
    method.extract_contexts(batch.x, batch.y, None)
    torch.testing.assert_close(method.backbone.stem[1].running_mean, before, rtol=0, atol=0)
    assert all(m.track_running_stats for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d))


# --- fusion schedule --------------------------------------------------------------------
def test_no_balanced_loss_before_warmup_then_fusion():
    method = _method(delta=0.0, warmup_epochs=2)
    out = _step(method, 1)
    assert out.logs["fused"] == 0.0 and out.logs["pushed"] == 0  # extraction skipped: the bank is emptied at epoch 2
    assert out.logs["loss_balanced"] == 0
    assert method.balanced_head.weight.grad is None
    assert method.uniform_head.weight.grad is not None
    method.begin_epoch(method.stages()[0], 2)
    out = _step(method, 2)
    assert out.logs["fused"] == 1.0 and out.logs["loss_balanced"] > 0
    assert method.balanced_head.weight.grad.abs().sum() > 0


def test_kept_bank_is_filled_during_warmup():
    method = _method(delta=0.0, warmup_epochs=2, empty_bank_each_epoch=False)
    out = _step(method, 0)
    assert out.logs["pushed"] == B and out.logs["fused"] == 0.0 and len(method.bank) == B
    method.begin_epoch(method.stages()[0], 1)
    assert len(method.bank) == B
    method = _method(delta=0.0, warmup_epochs=0)
    _step(method, 0)
    method.begin_epoch(method.stages()[0], 1)
    assert len(method.bank) == 0


def test_fusion_waits_for_a_full_bank():
    method = _method(delta=0.0, warmup_epochs=0, bank_multiple=2)
    out = _step(method, 0, seed=0)
    assert method.bank.capacity == 2 * B and len(method.bank) == B
    assert out.logs["fused"] == 0.0 and out.logs["loss_balanced"] == 0
    out = _step(method, 0, seed=1)
    assert method.bank.is_full and out.logs["fused"] == 1.0


def test_balanced_loss_is_on_fused_images_with_labels_kept(monkeypatch):
    method = _method(delta=0.0, warmup_epochs=0)
    seen = {}
    original = csa.fuse_context

    def recording(x, context, mask, lam):
        seen["x"], seen["out"] = x, original(x, context, mask, lam)
        return seen["out"]

    monkeypatch.setattr(csa, "fuse_context", recording)
    batches = _batches(method)
    method.train()
    out = method.training_step(batches, _ctx(method, 0))
    assert seen["x"] is batches["balanced"].x
    expected = F.cross_entropy(method.balanced_head(method.backbone(seen["out"])), batches["balanced"].y)
    torch.testing.assert_close(out.logs["loss_balanced"], expected.detach())


@pytest.mark.parametrize("per_sample,shape", [(False, ()), (True, (B,))])
@pytest.mark.parametrize(
    "distribution,a,b,low,high", [("uniform", 0.0, 1.0, 0, 1), ("beta", 2.0, 2.0, 0, 1), ("uniform", 0.3, 0.3, 0.3, 0.3)]
)
def test_lambda_shape_and_distribution(monkeypatch, per_sample, shape, distribution, a, b, low, high):
    method = _method(delta=0.0, warmup_epochs=0, lam_per_sample=per_sample, lam_distribution=distribution, lam_a=a, lam_b=b)
    lams = []
    original = csa.fuse_context
    monkeypatch.setattr(csa, "fuse_context", lambda x, c, m, lam: lams.append(lam) or original(x, c, m, lam))
    assert _step(method, 0).logs["fused"] == 1.0
    (lam,) = lams
    assert lam.shape == shape
    assert ((lam >= low) & (lam <= high)).all()
    if low == high:
        torch.testing.assert_close(lam, torch.full(shape, low))


def test_without_bank_uses_this_steps_confident_samples():
    method = _method(delta=0.0, warmup_epochs=0, use_bank=False)
    out = _step(method, 0)
    assert method.bank is None
    assert out.logs["fused"] == 1.0 and out.logs["pushed"] == B and out.logs["loss_balanced"] > 0
    method = _method(delta=1.0, warmup_epochs=0, use_bank=False)
    method.params.delta = 1.01
    out = _step(method, 0)
    assert out.logs["fused"] == 0.0 and out.logs["loss_balanced"] == 0
    assert method.balanced_head.weight.grad is None


def test_final_epochs_train_balanced_head_on_plain_batches(monkeypatch):
    method = _method(epochs=5, stop_last_epochs=2, delta=0.0, warmup_epochs=0)
    monkeypatch.setattr(method, "extract_contexts", lambda *a: pytest.fail("no extraction in the plain epochs"))
    batches = _batches(method)
    method.train()
    out = method.training_step(batches, _ctx(method, 3))
    assert out.logs["fused"] == 0.0 and out.logs["pushed"] == 0
    expected = F.cross_entropy(method.balanced_head(method.backbone(batches["balanced"].x)), batches["balanced"].y)
    torch.testing.assert_close(out.logs["loss_balanced"], expected.detach())
    out.loss.backward()
    assert method.balanced_head.weight.grad.abs().sum() > 0


def test_dual_never_extracts_and_trains_balanced_head_from_the_start(monkeypatch):
    method = _method("dual")
    assert not isinstance(method, csa.ContextShiftAugmentation) and not hasattr(method, "extract_contexts")
    for epoch in (0, 15):
        out = _step(method, epoch)
        assert set(out.logs) == {"loss_uniform", "loss_balanced", "balanced_trained"}
        assert out.logs["balanced_trained"] == 1.0
        assert out.logs["loss_balanced"] > 0
        assert method.balanced_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown method.params.delta for DualBranch"):
        _method("dual", delta=0.5)


def test_loss_weights():
    method = _method(delta=0.0, warmup_epochs=0, uniform_weight=0.0, balanced_weight=2.0)
    out = _step(method, 0, backward=False)
    torch.testing.assert_close(out.loss, 2.0 * out.logs["loss_balanced"])


def test_la_losses_use_class_prior():
    method = _method("dual", uniform_loss="la", balanced_loss="la", uniform_loss_params={"tau": 1.0})
    batches = _batches(method)
    method.train()
    out = method.training_step(batches, _ctx(method, 0))
    prior = torch.log(torch.as_tensor(COUNTS / COUNTS.sum(), dtype=torch.float32))
    u = batches["uniform"]
    expected = F.cross_entropy(method.uniform_head(method.backbone(u.x)) + prior, u.y)
    torch.testing.assert_close(out.logs["loss_uniform"], expected.detach())


def test_the_dual_branch_adds_the_term_its_uniform_term_hook_gives():
    from tailshift.methods.dual import DualBranch

    class WithExtraTerm(DualBranch):
        def uniform_term(self, uniform, view_embeddings, ctx):
            return self.uniform_head.weight.sum() * 0 + 5.0, {"extra": 1.0}

    torch.manual_seed(0)
    method = WithExtraTerm(create_model("lenet2d", in_channels=3, image_size=28), 10, COUNTS, 20, {})
    method.train()
    out = method.training_step(_batches(method), _ctx(method, 0))
    torch.testing.assert_close(out.loss.detach(), out.logs["loss_uniform"] + out.logs["loss_balanced"] + 5.0)
    assert out.logs["extra"] == 1.0 and "loss_contrastive" not in out.logs
    plain = _method("dual")  # off by default: no views, no term
    assert plain.uniform_views(_batches(plain)["uniform"], _ctx(plain, 0)) is None
    assert plain.uniform_term(_batches(plain)["uniform"], None, _ctx(plain, 0)) == (None, {})


def test_release_table10_la_is_on_the_uniform_head_only():
    # table10/cifar100-lt_csa-la as shipped: LA on the uniform head, plain CE on the (plain, dual) balanced batch
    from tailshift.config import load_config
    from tailshift.config import config_path

    params = load_config(config_path("table10/cifar100-lt_csa-la")).method.params
    method = _method("dual", **{k: params[k] for k in ("uniform_loss", "balanced_loss", "balanced_stream")})
    batches = _batches(method)
    method.train()
    out = method.training_step(batches, _ctx(method, 0))
    prior = torch.log(torch.as_tensor(COUNTS / COUNTS.sum(), dtype=torch.float32))
    u, b = batches["uniform"], batches["balanced"]
    with torch.no_grad():
        uniform_logits = method.uniform_head(method.backbone(u.x))
        balanced_logits = method.balanced_head(method.backbone(b.x))
    torch.testing.assert_close(out.logs["loss_uniform"], F.cross_entropy(uniform_logits + prior, u.y))
    torch.testing.assert_close(out.logs["loss_balanced"], F.cross_entropy(balanced_logits, b.y))
    assert not torch.allclose(out.logs["loss_balanced"], F.cross_entropy(balanced_logits + prior, b.y))


def test_predict_heads():
    method = _method().eval()
    x = _batches(method)["uniform"].x
    with torch.no_grad():
        out = method.predict(x)
        features = method.backbone(x)
        torch.testing.assert_close(out["balanced"], method.balanced_head(features))
        torch.testing.assert_close(out["uniform"], method.uniform_head(features))
    torch.testing.assert_close(out["ensemble"], (out["balanced"] + out["uniform"]) / 2)
    assert method.default_head == "balanced"


# --- state ------------------------------------------------------------------------------
def test_extra_state_round_trips_the_bank():
    method = _method(delta=0.0, warmup_epochs=0, bank_multiple=2)
    assert method.extra_state() == {"bank": None}
    _step(method, 0)
    buffer = io.BytesIO()
    torch.save(method.extra_state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other = _method(delta=0.0, warmup_epochs=0, bank_multiple=2)
    other.load_extra_state(state)
    assert len(other.bank) == len(method.bank) == B and other.bank.capacity == 2 * B
    for mine, theirs in zip(method.bank.contents(), other.bank.contents()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    # Both continue identically.
    out_a, out_b = _step(method, 0, seed=3), _step(other, 0, seed=3)
    assert out_a.logs["fused"] == out_b.logs["fused"] == 1.0
    for mine, theirs in zip(method.bank.contents(), other.bank.contents()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


# --- through the engine ----------------------------------------------------------------------
def _cfg(tmp_path, name, method="csa", epochs=2, **params):
    csa_only = {"warmup_epochs": 1, "delta": 0.0} if method == "csa" else {}
    return build_config(
        {
            "model": {"name": "lenet2d"},
            "method": {"name": method, "params": {**csa_only, **params}},
            "train": {"epochs": epochs, "batch_size": 32, "test_batch_size": 100},
            "device": "cpu",
            "progress": False,
            "output": str(tmp_path / name),
        }
    )


def _strip(curve):
    return [{k: v for k, v in record.items() if k not in ("seconds", "cpu_seconds")} for record in curve]


def test_training_runs_are_deterministic(tmp_path):
    data = tiny_prepared(channels=3)
    first, second = train(_cfg(tmp_path, "a"), data), train(_cfg(tmp_path, "b"), data)
    assert _strip(first["curve"]) == _strip(second["curve"])
    assert first["heads"] == second["heads"]
    assert set(first["heads"]) == {"balanced", "uniform", "ensemble"}
    warmup, fused = first["curve"]
    assert warmup["fused"] == 0 and warmup["loss_balanced"] == 0
    assert fused["fused"] > 0 and fused["loss_balanced"] > 0 and fused["pushed"] > 0


def test_killed_run_with_kept_bank_resumes_exactly(tmp_path):
    data = tiny_prepared(channels=3)
    # Two batches of capacity: the first resumed step keeps half of the checkpointed bank.
    kept = {"empty_bank_each_epoch": False, "bank_multiple": 2}
    full = train(_cfg(tmp_path, "full", epochs=3, **kept), data)
    cfg = _cfg(tmp_path, "killed", epochs=3, **kept)
    fit_until_interrupted(Trainer(cfg, data), lambda stage, epoch, started: epoch == 2)
    resumed = Trainer(cfg, data).fit()
    assert resumed["heads"] == full["heads"]
    assert _strip(resumed["curve"]) == _strip(full["curve"])


def test_dual_runs_through_the_engine(tmp_path):
    metrics = train(_cfg(tmp_path, "dual", method="dual"), tiny_prepared(channels=3))
    assert all("pushed" not in r and r["loss_balanced"] > 0 for r in metrics["curve"])


def test_training_after_an_inference_mode_evaluation_in_the_same_process(tmp_path):
    """Caches filled during evaluation (torch.inference_mode) must not poison later training."""
    import tailshift.cam as cam
    import tailshift.models.ops as ops

    ops._INDEX_CACHE.clear()
    cam._bicubic_matrix.cache_clear()
    model = create_model("lenet2d", in_channels=3, image_size=28)
    with torch.inference_mode():
        model(torch.rand(2, 3, 28, 28).contiguous(memory_format=torch.channels_last))
        cam.upsample_cam(torch.rand(2, 5, 5), 28)
    x = torch.rand(4, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()
    cam_map = torch.rand(2, 5, 5, requires_grad=True)
    cam.upsample_cam(cam_map, 28).sum().backward()
    assert cam_map.grad is not None


def test_show_fused_batch_fills_a_training_sized_bank_and_fuses_at_each_lambda():
    from tailshift.methods.mixing_ops import fuse_context

    method = _method(delta=0.0).eval()
    batches = [(b["uniform"].x, b["uniform"].y) for b in (_batches(method, seed) for seed in range(3))]
    x_bal = _batches(method, 9)["balanced"].x[:5]
    shown = method.show_fused_batch(iter(batches), x_bal, (0.0, 0.5), torch.Generator().manual_seed(0))
    assert (shown.uniform_images_scanned, shown.bank_entries, shown.bank_capacity) == (B, B, B)  # full after one batch
    assert shown.contexts.shape == x_bal.shape
    torch.testing.assert_close(shown.fused[0.0], x_bal)
    torch.testing.assert_close(shown.fused[0.5], fuse_context(x_bal, shown.contexts, shown.masks, 0.5))
    none_confident = _method(delta=1.0).eval()
    none_confident.params.delta = 1.01
    with pytest.raises(RuntimeError, match="no training image reaches"):
        none_confident.show_fused_batch(iter(batches), x_bal, (0.5,), torch.Generator())


def test_a_balanced_head_that_never_fused_is_flagged_untrained(tmp_path):
    data = tiny_prepared(channels=3)
    never = train(_cfg(tmp_path, "never", warmup_epochs=2), data)  # fusion would start in epoch 3 of 2
    assert all(r["fused"] == 0 and r["balanced_trained"] == 0 for r in never["curve"])
    assert {h for h, r in never["heads"].items() if r["untrained"]} == {"balanced", "ensemble"}
    assert never["untrained_hint"].startswith("method.params.warmup_epochs=2 leaves none of the run's 2 epochs")
    fused = train(_cfg(tmp_path, "fused"), data)
    assert fused["curve"][1]["balanced_trained"] > 0
    assert not any(r["untrained"] for r in fused["heads"].values()) and "untrained_hint" not in fused
    assert not any(r["untrained"] for r in train(_cfg(tmp_path, "dual", method="dual"), data)["heads"].values())


def test_curves_from_before_the_flag_are_read_from_the_fused_share():
    method = _method(epochs=2)
    assert method.untrained_heads([{"fused": 0.0}, {"fused": 0.0}]) == {"balanced", "ensemble"}
    assert method.untrained_heads([{"fused": 0.0}, {"fused": 0.25}]) == set()
    plain_end = _method(epochs=2, stop_last_epochs=1)  # trains on plain images at the end: not readable from fused
    assert plain_end.untrained_heads([{"fused": 0.0}, {"fused": 0.0}]) == set()
