"""Each loss against a hand computation (numpy / explicit loops) on a small batch."""
import math

import numpy as np
import pytest
import torch

from tailshift.methods import METHODS
from tailshift.methods.losses import LOSSES, build_loss, effective_number_weights
from tailshift.models import create_model

COUNTS = np.array([50.0, 20.0, 5.0, 2.0])
LOGITS = torch.tensor([[2.0, 0.5, -1.0, 0.1], [0.3, 1.2, 0.4, -0.5], [-0.2, 0.1, 0.9, 0.0], [1.0, 1.0, 1.0, 3.0],
                       [0.0, -1.0, 2.0, 0.5]])
TARGETS = torch.tensor([0, 1, 2, 3, 1])


def hand_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    return z - np.log(np.exp(z).sum())


def hand_ce(logits, targets, offsets=None):
    offsets = np.zeros(logits.shape[1]) if offsets is None else offsets
    return np.array([-hand_log_softmax(z + offsets)[y] for z, y in zip(logits.numpy(), targets.numpy())])


def close(value, expected):
    assert float(value) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def test_cross_entropy():
    close(build_loss("ce", COUNTS)(LOGITS, TARGETS), hand_ce(LOGITS, TARGETS).mean())


def test_logit_adjusted_and_balanced_softmax():
    prior = COUNTS / COUNTS.sum()
    close(build_loss("la", COUNTS, {"tau": 1.5})(LOGITS, TARGETS), hand_ce(LOGITS, TARGETS, 1.5 * np.log(prior)).mean())
    # Ren et al. Eq. 4: n_y e^{z_y} / sum_j n_j e^{z_j}
    expected = [-math.log(COUNTS[y] * math.exp(z[y]) / sum(n * math.exp(v) for n, v in zip(COUNTS, z)))
                for z, y in zip(LOGITS.tolist(), TARGETS.tolist())]
    close(build_loss("balanced-softmax", COUNTS)(LOGITS, TARGETS), np.mean(expected))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_focal(gamma):
    p = np.exp([hand_log_softmax(z)[y] for z, y in zip(LOGITS.numpy(), TARGETS.numpy())])
    expected = np.mean(-((1 - p) ** gamma) * np.log(p))
    close(build_loss("focal", COUNTS, {"gamma": gamma})(LOGITS, TARGETS), expected)


def test_sigmoid_focal_sums_binary_terms():
    gamma, total = 2.0, 0.0
    for z, y in zip(LOGITS.tolist(), TARGETS.tolist()):
        for j, v in enumerate(z):
            s = 1 / (1 + math.exp(-v))
            pt = s if j == y else 1 - s
            total += -((1 - pt) ** gamma) * math.log(pt)
    close(build_loss("focal", COUNTS, {"gamma": gamma, "activation": "sigmoid"})(LOGITS, TARGETS), total / len(TARGETS))


def test_effective_number_weights():
    beta = 0.9
    raw = (1 - beta) / (1 - beta ** COUNTS)
    np.testing.assert_allclose(effective_number_weights(torch.tensor(COUNTS), beta).numpy(), raw / raw.sum() * 4, rtol=1e-6)
    with pytest.raises(ValueError, match="beta must be in \\[0, 1\\), got 1.0"):
        effective_number_weights(torch.tensor(COUNTS), 1.0)


def test_class_balanced_ce_and_focal():
    beta = 0.99
    raw = (1 - beta) / (1 - beta ** COUNTS)
    w = raw / raw.sum() * 4
    ce = hand_ce(LOGITS, TARGETS)
    close(build_loss("class-balanced", COUNTS, {"beta": beta})(LOGITS, TARGETS), np.mean(w[TARGETS.numpy()] * ce))
    p = np.exp(-ce)
    focal = -((1 - p) ** 1.0) * np.log(p)
    cb_focal = build_loss("class-balanced", COUNTS, {"beta": beta, "loss": "focal", "loss_params": {"gamma": 1.0}})
    close(cb_focal(LOGITS, TARGETS), np.mean(w[TARGETS.numpy()] * focal))


def test_drw_switches_to_normalised_class_weights_at_its_epoch():
    loss = build_loss("drw", COUNTS, {"start_epoch": 3, "beta": 0.999})
    ce = hand_ce(LOGITS, TARGETS)
    raw = (1 - 0.999) / (1 - 0.999 ** COUNTS)
    w = (raw / raw.sum() * 4)[TARGETS.numpy()]
    for epoch, expected in ((0, ce.mean()), (2, ce.mean()), (3, (w * ce).sum() / w.sum()), (9, (w * ce).sum() / w.sum())):
        loss.begin_epoch(epoch, 10)
        close(loss(LOGITS, TARGETS), expected)
    loss.begin_epoch(1, 10)  # a resumed run replays the epoch hook: the weights follow the epoch, not history
    close(loss(LOGITS, TARGETS), ce.mean())


def test_class_balanced_around_drw_passes_the_epoch_on():
    loss = build_loss("class-balanced", COUNTS, {"beta": 0.99, "loss": "drw",
                                                 "loss_params": {"start_epoch": 2, "beta": 0.999}})
    loss.begin_epoch(1, 10)
    assert loss.inner.inner.class_weights is None
    loss.begin_epoch(2, 10)  # DRW's re-weighting starts at its epoch, wrapped or not
    torch.testing.assert_close(loss.inner.inner.class_weights, effective_number_weights(torch.tensor(COUNTS), 0.999))


def test_reduce_is_the_losses_own_batch_mean_of_given_per_sample_losses():
    drw = build_loss("drw", COUNTS, {"start_epoch": 0, "beta": 0.999})
    drw.begin_epoch(0, 1)
    per_sample = torch.arange(1.0, 6.0)
    w = effective_number_weights(torch.tensor(COUNTS), 0.999)[TARGETS]
    close(drw.reduce(per_sample, TARGETS), (w * per_sample).sum() / w.sum())
    close(drw(LOGITS, TARGETS), drw.reduce(drw.per_sample(LOGITS, TARGETS), TARGETS))
    close(build_loss("ce", COUNTS).reduce(per_sample, TARGETS), 3.0)


def test_ldam_margins_and_loss():
    loss = build_loss("ldam", COUNTS, {"max_margin": 0.5, "scale": 30.0})
    margins = COUNTS ** -0.25
    margins = margins * 0.5 / margins.max()
    np.testing.assert_allclose(loss.margins.numpy(), margins, rtol=1e-6)
    assert margins[-1] == pytest.approx(0.5)  # the rarest class gets the largest margin
    cosines = torch.tanh(LOGITS)  # LDAM is meant for cosine logits
    expected = []
    for z, y in zip(cosines.tolist(), TARGETS.tolist()):
        shifted = [30.0 * (v - (margins[y] if j == y else 0.0)) for j, v in enumerate(z)]
        expected.append(-hand_log_softmax(shifted)[y])
    close(loss(cosines, TARGETS), np.mean(expected))
    drw = build_loss("drw", COUNTS, {"start_epoch": 0, "loss": "ldam"})
    drw.begin_epoch(0, 1)
    w = effective_number_weights(torch.tensor(COUNTS), 0.9999).numpy()[TARGETS.numpy()]
    close(drw(cosines, TARGETS), (w * np.array(expected)).sum() / w.sum())


def test_losses_are_registered_and_bad_params_fail_in_one_line():
    assert {"ce", "la", "focal", "class-balanced", "drw", "ldam", "balanced-softmax"} <= set(LOSSES.names())
    with pytest.raises(ValueError, match="unknown loss 'magic'; known: balanced-softmax, ce"):
        build_loss("magic", COUNTS)
    with pytest.raises(ValueError, match="unknown method.params.loss_params.gama for Focal; known: gamma, activation") as err:
        build_loss("focal", COUNTS, {"gama": 1}, "method.params.loss_params")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="loss_params.activation must be one of softmax, sigmoid; got 'tanh'"):
        build_loss("focal", COUNTS, {"activation": "tanh"})
    with pytest.raises(ValueError, match="loss_params.loss must be one of balanced-softmax, ce, .*; got 'magic'"):
        build_loss("drw", COUNTS, {"loss": "magic"})
    with pytest.raises(ValueError, match="loss_params.loss_params.gamma must be >= 0, got -1.0"):
        build_loss("class-balanced", COUNTS, {"loss": "focal", "loss_params": {"gamma": -1.0}})


def test_loss_state_never_enters_a_checkpoint():
    backbone = create_model("lenet2d")
    method = METHODS.get("erm")(backbone, 4, COUNTS, 10, {"loss": "drw", "loss_params": {"loss": "ldam"}})
    plain = METHODS.get("ce")(create_model("lenet2d"), 4, COUNTS, 10)
    assert set(method.state_dict()) == set(plain.state_dict())


def test_cosine_class_vectors_start_at_unit_norm_as_ldams_normedlinear():
    from tailshift.methods.heads import CosineClassifier

    torch.manual_seed(0)
    head = CosineClassifier(64, 100)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(100))
    assert head.weight.std() > 0.05  # directions still drawn at random, not a constant


def test_cosine_logits_and_ldam_margins_stay_float32_under_bf16_autocast():
    """Cosines scaled by 30 in bf16 would carry errors of about 0.1: both are computed in float32."""
    from tailshift.methods.heads import CosineClassifier

    torch.manual_seed(0)
    head = CosineClassifier(16, 4)
    x = torch.randn(8, 16)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    ldam = build_loss("ldam", np.array([100, 30, 10, 3]))
    exact = ldam.margin_logits(head(x), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cosines = head(x)
        scaled = ldam.margin_logits(cosines.bfloat16(), targets)
    assert cosines.dtype == scaled.dtype == torch.float32
    torch.testing.assert_close(cosines, head(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(scaled, exact, rtol=0, atol=0.2)  # the bf16 input's own rounding, times 30


# --- losses declared on methods: one field each, checked at config build, every epoch hook run by the base
def _method_with_drw_losses(name: str):
    """Method ``name`` with every loss it declares a DRW around CE, re-weighting from epoch 2."""
    fields = METHODS.get(name).Params.loss_fields()
    params = {field: "drw" for field in fields} | {f"{field}_params": {"start_epoch": 2, "beta": 0.999} for field in fields}
    # BBN needs a last block, CAM-BS a pooled backbone
    backbone = create_model("resnet20") if name in ("bbn", "cam-bs") else create_model("lenet2d")
    return METHODS.get(name)(backbone, 4, COUNTS, 10, params), fields


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_switches_its_drw_losses_on_at_their_epoch(name):
    method, fields = _method_with_drw_losses(name)
    assert fields, f"{name} declares no loss"
    ce = hand_ce(LOGITS, TARGETS)
    raw = (1 - 0.999) / (1 - 0.999 ** COUNTS)
    w = (raw / raw.sum() * 4)[TARGETS.numpy()]
    stage = method.stages()[0]
    for epoch, expected in ((1, ce.mean()), (2, (w * ce).sum() / w.sum()), (1, ce.mean())):  # 1 again: a resume
        method.begin_epoch(stage, epoch)
        for field in fields:  # each declared loss is the method's attribute of that name
            close(getattr(method, field)(LOGITS, TARGETS), expected)


def test_a_method_holding_losses_anywhere_never_calls_their_epoch_hook_itself():
    from tailshift.methods.base import Method, Stage, StreamRequest

    class TwoLosses(Method):
        def __init__(self):
            super().__init__(create_model("lenet2d"), 4, COUNTS, 10)
            self.losses = torch.nn.ModuleList([build_loss("drw", COUNTS, {"start_epoch": 2}),
                                               build_loss("class-balanced", COUNTS, {"loss": "drw"})])

    method = TwoLosses()
    stage = Stage("train", 10, {"main": StreamRequest("uniform")})
    method.begin_epoch(stage, 2)
    assert method.losses[0].inner.class_weights is not None
    assert method.losses[1].inner.inner.class_weights is None  # its DRW starts at its default epoch, 160
    method.begin_epoch(stage, 1)
    assert method.losses[0].inner.class_weights is None


@pytest.mark.parametrize("name", METHODS.names())
def test_every_declared_loss_has_its_params_checked_when_the_config_is_built(name):
    from tailshift.config import build_config
    from tailshift.resolve import resolve_run

    for field in METHODS.get(name).Params.loss_fields():
        focal = [f"method.name={name}", f"method.params.{field}=focal"]
        with pytest.raises(ValueError, match=rf"^unknown method.params.{field}_params.gama for Focal; known: gamma, activation$"):
            resolve_run(build_config({}, [*focal, f"method.params.{field}_params.gama=1"]))
        with pytest.raises(ValueError, match=rf"^method.params.{field}_params.gamma must be >= 0, got -1.0$"):
            resolve_run(build_config({}, [*focal, f"method.params.{field}_params.gamma=-1"]))


def test_a_loss_field_brings_its_params_field():
    from dataclasses import dataclass, fields

    from tailshift.methods.losses import LossOptions, loss_field

    @dataclass
    class Params(LossOptions):
        first: str = loss_field("ce")
        weight: float = 1.0
        second: str = loss_field("la")

    assert [f.name for f in fields(Params)] == ["first", "first_params", "weight", "second", "second_params"]
    assert Params() == Params("ce", {}, 1.0, "la", {})
    assert Params().build_loss("second", COUNTS).params.tau == 1.0
    with pytest.raises(ValueError, match="method.params.second_params.tau must be >= 0, got -1.0"):
        Params(second_params={"tau": -1.0})
    with pytest.raises(TypeError, match="Declared.first_params comes with loss_field 'first': do not declare it"):
        @dataclass
        class Declared(LossOptions):
            first: str = loss_field("ce")
            first_params: dict = None
