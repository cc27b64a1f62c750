"""The Table 2 methods beyond CE / cRT / CB-RS / CSA: logits and losses against hand computations."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_prepared
from tailshift.config import build_config, load_config
from tailshift.data.pipeline import Batch
from tailshift.data.sampling import Sampler, SamplerSpec
from tailshift.engine import train
from tailshift.methods import METHODS, StepContext
from tailshift.methods.mixing_ops import cutmix_box, mixup, paste_box, sample_lambda
from tailshift.models import create_model
from tailshift.config import config_path
from tailshift.resolve import resolve_run

COUNTS = np.array([60, 40, 30, 20, 15, 10, 10, 6, 5, 4])
B = 8


def _method(name, model="lenet2d", epochs=10, **params):
    torch.manual_seed(0)
    backbone = create_model(model, in_channels=3, image_size=28 if model == "lenet2d" else 32)
    return METHODS.get(name)(backbone, 10, COUNTS, epochs, params)


def _batch(seed, size=28, n=B):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 3, size, size, generator=g), torch.randint(10, (n,), generator=g), torch.arange(n))


def _ctx(method, epoch, stage=0, seed=0):
    return StepContext(method.stages()[stage], stage, epoch, 0, torch.Generator().manual_seed(seed))


# --- decoupled: LWS, tau-norm, cRT / LWS + mixup ---------------------------------------------
def test_lws_scales_the_frozen_classifier_and_trains_only_the_scales():
    method = _method("lws")
    represent, retrain = method.stages()
    assert retrain.streams["main"].role == "balanced" and not retrain.warmup
    method.begin_stage(retrain, fresh=True)
    assert method.trainable_parameters(retrain) == [method.retrained.scale]
    with torch.no_grad():
        method.retrained.scale.copy_(torch.linspace(0.5, 2.0, 10))
    x = _batch(0).x
    method.eval()
    with torch.no_grad():
        features = method.backbone(x)
        out = method.predict(x)
    expected = (features @ method.head.weight.T + method.head.bias) * torch.linspace(0.5, 2.0, 10)
    torch.testing.assert_close(out["lws"], expected)
    torch.testing.assert_close(out["ce"], features @ method.head.weight.T + method.head.bias)
    assert method.default_head == "lws"


def test_tau_norm_normalises_the_weights_and_has_no_second_stage():
    method = _method("tau-norm", tau=0.5)
    assert [s.name for s in method.stages()] == ["represent"]
    x = _batch(1).x
    method.eval()
    with torch.no_grad():
        features = method.backbone(x)
        w = method.head.weight
        expected = features @ (w / (w ** 2).sum(dim=1, keepdim=True) ** 0.25).T  # ||w||^0.5
        torch.testing.assert_close(method.predict(x)["tau-norm"], expected)
    with pytest.raises(ValueError, match=r"method.params.retrain_epochs must be in \[0, 0\] \(nothing is re-trained\), got 2"):
        _method("tau-norm", retrain_epochs=2)


def test_a_two_stage_method_acts_on_what_a_stage_is_not_on_its_name():
    method = _method("crt")
    represent, retrain = method.stages()
    assert (represent.name, represent.retrains_classifier) == ("represent", False)
    assert (retrain.name, retrain.retrains_classifier) == ("retrain", True)  # the name stays: checkpoints, curves
    renamed = dataclasses.replace(retrain, name="stage-2")
    method.begin_stage(renamed, fresh=True)
    assert method.trainable_parameters(renamed) == list(method.retrained.parameters())
    assert not any(p.requires_grad for p in method.backbone.parameters())
    method.train_mode(renamed)
    assert method.retrained.training and not method.backbone.training
    plain = dataclasses.replace(retrain, retrains_classifier=False)  # named "retrain", but not one
    method.begin_stage(plain, fresh=True)
    assert all(p.requires_grad for p in method.backbone.parameters())
    assert method.trainable_parameters(plain) == [*method.backbone.parameters(), *method.head.parameters()]


@pytest.mark.parametrize("name", ["crt", "lws"])
def test_two_stage_mixup_trains_stage_one_on_mixed_batches(name):
    method = _method(name, mixup_alpha=1.0)
    assert set(method.heads()) == {"mixup", method.default_head}
    batch = _batch(2)
    method.train()
    method.begin_stage(method.stages()[0], fresh=True)
    out = method.training_step({"main": batch}, _ctx(method, 0, seed=5))
    x, y_a, y_b, lam = mixup(batch.x, batch.y, 1.0, torch.Generator().manual_seed(5))
    assert 0 < lam < 1
    logits = method.head(method.backbone(x))
    torch.testing.assert_close(out.loss, lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b))
    # stage 2 is plain: the re-trained classifier on frozen features
    retrain = method.stages()[1]
    method.begin_stage(retrain, fresh=True)
    method.train_mode(retrain)
    out = method.training_step({"main": batch}, _ctx(method, 0, stage=1))
    with torch.no_grad():
        expected = F.cross_entropy(method.classify(method.backbone(batch.x)), batch.y)
    torch.testing.assert_close(out.loss, expected)


# --- single-head losses on the method: cosine classifier, sigmoid prior, DRS --------------------
def test_cosine_classifier_gives_cosines():
    method = _method("erm", classifier="cosine", loss="ldam")
    x = _batch(3).x
    with torch.no_grad():
        f = method.backbone(x)
        w = method.head.weight
        expected = (f / f.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
        torch.testing.assert_close(method.predict(x)["main"], expected)


def test_sigmoid_prior_sets_the_head_bias():
    method = _method("erm", sigmoid_prior=0.1, loss="focal", loss_params={"activation": "sigmoid"})
    torch.testing.assert_close(method.head.bias, torch.full((10,), -math.log(9.0)))
    with pytest.raises(ValueError, match="sigmoid_prior needs a linear classifier"):
        _method("erm", sigmoid_prior=0.1, classifier="cosine")


def test_the_sigmoid_prior_bias_is_exempt_from_weight_decay_and_no_other_parameter():
    from tailshift.optim import build_optimizer

    method = _method("erm", sigmoid_prior=0.1, loss="focal", loss_params={"activation": "sigmoid"})
    stage = method.stages()[0]
    optim = load_config(config_path("table2/cifar10-lt_focal")).train.optim
    decayed, exempt = build_optimizer(method.trainable_parameters(stage), 0.1, optim).param_groups
    assert exempt["params"] == [method.head.bias] and exempt["weight_decay"] == 0.0
    assert decayed["weight_decay"] == optim.weight_decay > 0
    assert len(decayed["params"]) + 1 == len([p for p in method.parameters() if p.requires_grad])
    plain = _method("erm", loss="focal", loss_params={"activation": "sigmoid"})
    assert [len(g["params"]) for g in build_optimizer(plain.trainable_parameters(stage), 0.1, optim).param_groups] \
        == [len(decayed["params"]) + 1]


@pytest.mark.parametrize("name", ["table2/cifar100-lt_cb-focal", "table2/cifar100-lt_cb-ce"])
def test_cifar100_class_balanced_rows_use_cui_et_al_best_rho100_setting(name):
    loss = load_config(config_path(name)).method.params["loss_params"]
    assert loss["beta"] == 0.9
    if loss["loss"] == "focal":
        assert loss["loss_params"]["gamma"] == 1.0


@pytest.mark.parametrize("name", ["table2/cifar10-lt_focal", "table2/cifar10-lt_cb-focal", "table2/cifar100-lt_focal",
                                  "table2/cifar100-lt_cb-focal"])
def test_shipped_focal_rows_start_every_class_at_probability_one_over_c_as_cui_et_al(name):
    cfg = load_config(config_path(name))
    assert cfg.method.params["sigmoid_prior"] == 1 / {"cifar10": 10, "cifar100": 100}[cfg.data.dataset]


def test_drs_switches_stream_at_its_epoch():
    method = _method("drs", start_epoch=3)
    stage = method.stages()[0]
    assert stage.driver == "main" and stage.streams["resampled"].role == "balanced"
    uniform, resampled = _batch(4), _batch(5)
    method.eval()  # no batch norm in LeNet; eval only keeps the two forwards comparable
    for epoch, used in ((2, uniform), (3, resampled)):
        out = method.training_step({"main": uniform, "resampled": resampled}, _ctx(method, epoch))
        with torch.no_grad():
            expected = F.cross_entropy(method.head(method.backbone(used.x)), used.y)
        torch.testing.assert_close(out.loss.detach(), expected)


# --- BBN -----------------------------------------------------------------------------------
def test_reversed_sampler_draws_classes_inversely_to_their_size():
    labels = np.repeat(np.arange(4), [400, 200, 100, 50])
    idx = Sampler(labels, SamplerSpec("reversed", epoch_length=60000), 0).epoch_indices(0)
    share = np.bincount(labels[idx], minlength=4) / 60000
    expected = (1 / np.array([400, 200, 100, 50])) / (1 / np.array([400, 200, 100, 50])).sum()
    np.testing.assert_allclose(share, expected, atol=0.01)


def test_bbn_cumulative_learning_and_inference():
    method = _method("bbn", model="resnet20", epochs=10)
    stage = method.stages()[0]
    assert stage.driver == "uniform" and stage.streams["reversed"].role == "reversed"
    assert [method.cumulative_weight(t, 10) for t in (0, 5, 9)] == [1.0, 0.75, pytest.approx(0.19)]
    conventional, reversed_ = _batch(6, 32), _batch(7, 32)
    method.eval()  # eval: batch norm running statistics, so the hand forward below sees the same network
    out = method.training_step({"uniform": conventional, "reversed": reversed_}, _ctx(method, 5))
    bb = method.backbone
    with torch.no_grad():
        f_c = bb.embed(bb.last_block()(bb.trunk(conventional.x)))
        f_r = bb.embed(method.rebalancing_block(bb.trunk(reversed_.x)))
        w, b = method.head.weight, method.head.bias
        z = 2 * 0.75 * f_c @ w[:, :64].T + 2 * 0.25 * f_r @ w[:, 64:].T + b
        expected = 0.75 * F.cross_entropy(z, conventional.y) + 0.25 * F.cross_entropy(z, reversed_.y)
        torch.testing.assert_close(out.loss, expected)
        x = conventional.x
        t = bb.trunk(x)
        z_test = bb.embed(bb.last_block()(t)) @ w[:, :64].T + bb.embed(method.rebalancing_block(t)) @ w[:, 64:].T + b
        torch.testing.assert_close(method.predict(x)["main"], z_test)
        torch.testing.assert_close(bb(x), bb.embed(bb.last_block()(bb.trunk(x))))
    assert not torch.equal(method.rebalancing_block.conv1.weight, bb.last_block().conv1.weight)


def test_bbn_needs_a_separable_backbone():
    with pytest.raises(ValueError, match="LeNet2d has no separable last block"):
        _method("bbn")


# --- Remix, CMO --------------------------------------------------------------------------------
def test_remix_label_weights_follow_eq6():
    method = _method("remix")  # kappa 3, tau 0.5
    y_a = torch.tensor([0, 9, 0, 1, 2])
    y_b = torch.tensor([9, 0, 1, 0, 3])  # n ratios: 15, 1/15, 1.5, 2/3, 1.5
    np.testing.assert_allclose(method.label_weights(y_a, y_b, 0.3).numpy(), [0.0, 0.3, 0.3, 0.3, 0.3])
    np.testing.assert_allclose(method.label_weights(y_a, y_b, 0.7).numpy(), [0.7, 1.0, 0.7, 0.7, 0.7])
    batch = _batch(8)
    out = method.training_step({"main": batch}, _ctx(method, 0, seed=1))
    x, y_a, y_b, lam = mixup(batch.x, batch.y, 1.0, torch.Generator().manual_seed(1))
    logits = method.head(method.backbone(x))
    w = method.label_weights(y_a, y_b, lam)
    expected = (w * F.cross_entropy(logits, y_a, reduction="none") + (1 - w) * F.cross_entropy(logits, y_b, reduction="none")).mean()
    torch.testing.assert_close(out.loss, expected)


def test_remix_with_a_reweighting_loss_weights_each_label_term():
    method = _method("remix", loss="drw", loss_params={"start_epoch": 0})
    method.begin_epoch(method.stages()[0], 0)
    batch = _batch(8)
    out = method.training_step({"main": batch}, _ctx(method, 0, seed=1))
    x, y_a, y_b, lam = mixup(batch.x, batch.y, 1.0, torch.Generator().manual_seed(1))
    logits = method.head(method.backbone(x))
    lam_y = method.label_weights(y_a, y_b, lam)
    cw = method.loss.inner.class_weights
    ce_a, ce_b = F.cross_entropy(logits, y_a, reduction="none"), F.cross_entropy(logits, y_b, reduction="none")
    expected = (cw[y_a] * lam_y * ce_a).sum() / cw[y_a].sum() + (cw[y_b] * (1 - lam_y) * ce_b).sum() / cw[y_b].sum()
    torch.testing.assert_close(out.loss, expected)


def test_cutmix_box_and_paste():
    g = torch.Generator().manual_seed(0)
    top, bottom, left, right = cutmix_box(32, 32, 0.75, g)  # a 16 x 16 box before clipping
    assert 0 <= top < bottom <= 32 and 0 <= left < right <= 32 and bottom - top <= 16 and right - left <= 16
    background, foreground = torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32)
    mixed, lam = paste_box(background, foreground, (4, 12, 8, 24))
    assert mixed.sum() == 2 * 3 * 8 * 16 and lam == 1 - 8 * 16 / 1024
    assert background.sum() == 0


def test_cmo_mixes_minority_boxes_in_its_window_only():
    method = _method("cmo", mix_prob=1.0, epochs=10)
    stage = method.stages()[0]
    assert stage.driver == "main" and stage.streams["minority"].role == "balanced"
    uniform, minority = _batch(9), _batch(10)
    out = method.training_step({"main": uniform, "minority": minority}, _ctx(method, 3, seed=2))
    assert out.logs["mixed"] == 0.0  # start_epoch 3: the release mixes from epoch 4
    torch.testing.assert_close(out.loss, F.cross_entropy(method.head(method.backbone(uniform.x)), uniform.y))
    out = method.training_step({"main": uniform, "minority": minority}, _ctx(method, 4, seed=2))
    g = torch.Generator().manual_seed(2)
    assert float(torch.rand((), generator=g)) < 1.0
    lam = float(sample_lambda(1, "beta", 1.0, 1.0, generator=g))
    x, lam = paste_box(uniform.x, minority.x, cutmix_box(28, 28, lam, g))
    logits = method.head(method.backbone(x))
    assert out.logs["mixed"] == 1.0
    torch.testing.assert_close(out.loss, lam * F.cross_entropy(logits, uniform.y) + (1 - lam) * F.cross_entropy(logits, minority.y))
    assert method.training_step({"main": uniform, "minority": minority}, _ctx(method, 7)).logs["mixed"] == 0.0  # end_epochs 3


# --- every shipped config builds, and the new methods train end to end ----------------------------
SHIPPED = sorted(p.stem for p in config_path("table2/cifar10-lt_ce").parent.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_table2_config_resolves(name):
    assert resolve_run(load_config(config_path(f"table2/{name}"))).fingerprint()


@pytest.mark.parametrize("method, params", [("bbn", {}), ("remix", {}), ("cmo", {"start_epoch": 0, "end_epochs": 0}),
                                            ("lws", {"retrain_epochs": 1, "mixup_alpha": 1.0}), ("tau-norm", {}),
                                            ("drs", {"start_epoch": 1}),
                                            ("erm", {"classifier": "cosine", "loss": "drw",
                                                     "loss_params": {"start_epoch": 1, "loss": "ldam"}})])
def test_new_methods_train_end_to_end(method, params, tmp_path):
    model = "resnet20" if method == "bbn" else "lenet2d"
    cfg = build_config({"output": str(tmp_path), "progress": False, "model": {"name": model},
                        "method": {"name": method, "params": params}},
                       ["train.epochs=2", "train.batch_size=64", "train.eval_every=0"])
    metrics = train(cfg, tiny_prepared(channels=3, size=20 if model == "resnet20" else 28))
    assert metrics["default_head"] in metrics["heads"]
    assert all(np.isfinite(r["loss"]) for r in metrics["curve"])
