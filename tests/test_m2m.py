"""M2m (methods/m2m.py) against hand computations of alinlab/M2m's rules, and through the engine."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import tailshift.methods.m2m as m2m
from conftest import fit_until_interrupted, tiny_prepared
from tailshift.config import build_config
from tailshift.engine import Trainer, build_method, train
from tailshift.methods import METHODS
from tailshift.models import create_model
from tailshift.resolve import resolve_run
from test_recipes import config, ldam, ours_stage1

COUNTS = np.array([60, 40, 25, 15, 10, 8, 6, 5, 4, 3])


def _method(**params):
    torch.manual_seed(0)
    return METHODS.get("m2m")(create_model("lenet2d", in_channels=3, image_size=28), 10, COUNTS, 4, params)


# --- the rules, by hand ----------------------------------------------------------------------
def test_rejection_rule_on_hand_made_logits():
    # softmax of the target: [0, 0] -> 0.5 exactly; [2, 0, 0] -> e^2 / (e^2 + 2) = 0.7870
    logits = torch.tensor([[0.0, 0.0, -50.0], [0.0, 0.0, -50.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0],
                           [0.0, 2.0, 0.0]])
    targets = torch.tensor([0, 1, 0, 0, 0, 0])
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # a Bernoulli draw with p 1 always succeeds, with p 0 never
    p = math.exp(2) / (math.exp(2) + 2)
    gen = torch.Generator().manual_seed(0)
    assert m2m.accepted(logits, targets, keep, 0.5, gen).tolist() == [True, False, True, True, False, False]
    assert m2m.accepted(logits, targets, keep, p - 1e-4, gen).tolist() == [False, False, True, True, False, False]
    assert m2m.accepted(logits, targets, keep, p + 1e-4, gen).tolist() == [False] * 6


def test_rejection_keeps_a_confident_translation_with_the_seeds_probability():
    # n_seed = 100, n_target = 10, beta = 0.99: kept with probability 1 - 0.99^90 = 0.5953
    keep = m2m.seed_weights(torch.tensor([0]), torch.tensor([1]), torch.tensor([100.0, 10.0]), 0.99)[:, 0]
    assert keep.item() == pytest.approx(1 - 0.99 ** 90)
    ok = m2m.accepted(torch.tensor([[0.0, 9.0]]).repeat(20000, 1), torch.ones(20000, dtype=torch.long),
                      keep.repeat(20000), 0.9, torch.Generator().manual_seed(1))
    assert ok.float().mean().item() == pytest.approx(1 - 0.99 ** 90, abs=0.015)


def test_rows_translated_with_probability_one_minus_n_over_n_max():
    counts = torch.tensor([100.0, 50.0, 10.0])
    labels = torch.tensor([0, 1, 2]).repeat(20000)
    rows = m2m.translated_rows(labels, counts, torch.Generator().manual_seed(0))
    share = torch.bincount(labels[rows], minlength=3) / 20000
    assert share[0] == 0  # the largest class is never replaced
    assert share[1].item() == pytest.approx(0.5, abs=0.015) and share[2].item() == pytest.approx(0.9, abs=0.015)


def test_seed_weights_by_hand():
    counts = torch.tensor([100.0, 10.0, 1.0])
    weights = m2m.seed_weights(torch.tensor([0, 1, 2, 0]), torch.tensor([2, 1, 0]), counts, 0.9)
    expected = [[1 - 0.9 ** 99, 1 - 0.9 ** 9, 0, 1 - 0.9 ** 99], [1 - 0.9 ** 90, 0, 0, 1 - 0.9 ** 90], [0, 0, 0, 0]]
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_each_row_is_translated_to_its_own_class_from_a_larger_class(monkeypatch):
    method = _method(gamma=0.0, beta=0.9)
    seen = {}

    def no_attack(judge, trained, images, seed_labels, targets, *args):
        seen.update(seed_labels=seed_labels, targets=targets)
        return images + 0.25  # visibly a translation

    monkeypatch.setattr(m2m, "attack", no_attack)
    y = torch.arange(10).repeat(6)
    x = torch.rand(len(y), 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5
    new_x, new_y, attempted, translated = method.translate(x, y, torch.Generator().manual_seed(3))
    counts = torch.as_tensor(COUNTS, dtype=torch.float32)
    assert torch.equal(new_y, y)  # the label of a replaced row is its own class
    assert (counts[seen["seed_labels"]] > counts[seen["targets"]]).all()  # seeds come from larger classes
    changed = (new_x != x).flatten(1).any(1)
    assert not changed[y == 0].any()  # the largest class is never replaced
    replaced = changed.sum().item()
    assert len(seen["targets"]) == round(attempted.item() * len(y)) > replaced == round(translated.item() * len(y)) > 0
    assert (torch.bincount(y[changed], minlength=10) <= torch.bincount(seen["targets"], minlength=10)).all()


def test_one_attack_step_against_the_hand_computed_gradient():
    """Linear g and f on 2 x 1 x 2 x 2 pixels: the random start, then one step
    x - eta * d / ||d||, d = (softmax(W_g x) - e_k) W_g / G + lam W_f[y_seed] / G."""
    torch.manual_seed(0)
    g, f = nn.Linear(4, 3), nn.Linear(4, 3)
    images = torch.tensor([[0.5, 0.4, 0.6, 0.5], [0.3, 0.5, 0.5, 0.7]]).view(2, 1, 2, 2)
    targets, seeds = torch.tensor([2, 1]), torch.tensor([0, 0])
    lam, eta = 0.5, 0.1
    out = m2m.attack(lambda v: g(v.flatten(1)), lambda v: f(v.flatten(1)), images, seeds, targets, lam, eta, 1,
                     torch.Generator().manual_seed(7))

    # the random start: U - 1/2 from the same stream, each channel's slice (over both rows) scaled to norm <= 0.5
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(7)).numpy().astype(np.float64) - 0.5
    norm = np.sqrt((noise ** 2).sum())  # one channel
    noise = noise * (0.5 / norm if norm > 0.5 else 1.0)
    x = np.clip(images.numpy().astype(np.float64) + noise, 0, 1).reshape(2, 4)
    wg, bg = g.weight.detach().double().numpy(), g.bias.detach().double().numpy()
    wf = f.weight.detach().double().numpy()
    z = x @ wg.T + bg
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(3)[targets.numpy()]) @ wg / 2 + lam * wf[seeds.numpy()] / 2
    step = x - eta * d / np.linalg.norm(d, axis=1, keepdims=True)
    np.testing.assert_allclose(out.view(2, 4).numpy(), np.clip(step, 0, 1), atol=1e-6)
    assert (np.abs(step - x).max() > 0.01) and ((step > 0) & (step < 1)).all()  # a real step, not clamped


def test_attack_clamps_to_pixels_and_runs_its_steps():
    g, f = nn.Linear(4, 3), nn.Linear(4, 3)
    images = torch.tensor([[0.0, 1.0, 0.5, 0.5]]).view(1, 1, 2, 2)
    calls = []

    def judge(v):
        calls.append(1)
        return g(v.flatten(1))

    out = m2m.attack(judge, lambda v: f(v.flatten(1)), images, torch.tensor([0]), torch.tensor([1]), 0.5, 5.0, 3,
                     torch.Generator().manual_seed(0))
    assert len(calls) == 3 and out.min() >= 0 and out.max() <= 1


def test_translation_is_deterministic_under_the_step_generator_and_restores_f_modes():
    method = _method(gamma=0.0, attack_iter=2)
    method.train()
    method.judge.eval()
    y = torch.arange(10).repeat(4)
    x = torch.rand(len(y), 3, 28, 28, generator=torch.Generator().manual_seed(0))
    first = method.translate(x, y, torch.Generator().manual_seed(5))
    second = method.translate(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0]) and first[3] > 0
    assert method.backbone.training and method.head.training and not method.judge.training


def test_pixels_follow_the_runs_normalisation():
    method = _method()
    method.set_input_normalisation([0.5, 0.4, 0.3], [0.2, 0.25, 0.5])
    pixels = torch.rand(2, 3, 4, 4)
    normalised = method.normalised(pixels)
    torch.testing.assert_close(normalised[:, 1], (pixels[:, 1] - 0.4) / 0.25)
    torch.testing.assert_close(method.pixels(normalised), pixels)
    assert "input_mean" not in method.state_dict()  # follows from the config, never checkpointed


def test_stages_train_g_first_then_f_with_g_frozen():
    method = _method(generator_epochs=3)
    generator, main = method.stages()
    assert (generator.name, generator.epochs, main.name, main.epochs) == ("generator", 3, "train", 4)
    assert main.driver == "main" and (main.streams["resampled"].role, main.streams["resampled"].q) == ("power", 0.0)
    judge = {id(p) for p in method.judge.parameters()}
    method.begin_stage(generator, True)
    assert {id(p) for p in method.trainable_parameters(generator)} == judge
    method.begin_stage(main, True)
    trained = {id(p) for p in method.trainable_parameters(main)}
    f = {id(p) for p in [*method.backbone.parameters(), *method.head.parameters()]}
    assert not trained & judge and trained == f
    assert not any(p.requires_grad for p in method.judge.parameters())
    method.train_mode(main)
    assert not method.judge.training and method.backbone.training
    assert _method().stages()[0].epochs == 4  # generator_epochs None: the run's epochs


def test_paper_recipe_is_m2ms_adjust_learning_rate():
    """alinlab/M2m config.py lines 163-176, for both stages (each runs the run's schedule from its epoch 0)."""
    from tailshift.reproduce.table2 import PAPER_RECIPES

    def authors(epoch, lr=0.1):
        if epoch < 5:
            return (epoch + 1) * lr / 5
        return lr / (100 if epoch >= 160 else 1) / (100 if epoch >= 180 else 1)

    cfg = config(PAPER_RECIPES["m2m"], run="m2m")
    for epoch in (0, 4, 5, 159, 160, 179, 180, 199):
        assert ours_stage1(cfg, epoch) == pytest.approx(authors(epoch), rel=1e-6)
        assert authors(epoch) == pytest.approx(ldam(epoch), rel=1e-6)  # the ldam recipe's own reference
    assert cfg.train.batch_size == 128 and cfg.train.optim.weight_decay == 2e-4 and cfg.train.optim.momentum == 0.9


@pytest.mark.parametrize("params,fragment", [
    ({"beta": 1.0}, "method.params.beta must be in (0, 1), got 1.0"),
    ({"beta": 0.0}, "method.params.beta must be in (0, 1), got 0.0"),
    ({"gamma": 1.5}, "method.params.gamma must be in [0, 1], got 1.5"),
    ({"lam": -0.1}, "method.params.lam must be >= 0, got -0.1"),
    ({"step_size": 0.0}, "method.params.step_size must be > 0, got 0.0"),
    ({"attack_iter": 0}, "method.params.attack_iter must be >= 1, got 0"),
    ({"start_epoch": -1}, "method.params.start_epoch must be >= 0, got -1"),
    ({"generator_epochs": 0}, "method.params.generator_epochs must be >= 1 (None: train.epochs), got 0"),
    ({"loss": "magic"}, "method.params.loss must be one of"),
    ({"volume": 3}, "unknown method.params.volume"),
])
def test_bad_params_fail_with_one_line(params, fragment):
    with pytest.raises(ValueError) as err:
        _method(**params)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --- through the engine ----------------------------------------------------------------------
def _cfg(tmp_path, name):
    return build_config({
        "model": {"name": "lenet2d"},
        "method": {"name": "m2m", "params": {"generator_epochs": 1, "start_epoch": 1, "gamma": 0.0, "attack_iter": 2}},
        "data": {"mean": [0.2, 0.2, 0.2], "std": [0.3, 0.3, 0.3]},
        "train": {"epochs": 2, "batch_size": 32, "test_batch_size": 100, "optim": {"lr": 0.02}},
        "device": "cpu", "threads": 1, "progress": False, "output": str(tmp_path / name),
    })


@pytest.mark.parametrize("judge_init", ["independent", "shared"])
def test_the_judges_backbone_is_built_apart_or_shared_as_asked(tmp_path, judge_init):
    """As the engine builds it: independent, g's backbone starts from weights of its own (the authors' g is
    another run, another seed) while f's are what the run's seed gives either way; shared, from f's."""
    def built(init):
        cfg = _cfg(tmp_path, init)
        cfg.method.params["judge_init"] = init
        torch.manual_seed(3)  # as the Trainer seeds before it builds
        return build_method(resolve_run(cfg), tiny_prepared(channels=3))

    method = built(judge_init)
    f, g = method.backbone.state_dict(), method.judge["backbone"].state_dict()
    weights = [k for k in f if k.endswith("weight")]
    assert f.keys() == g.keys() and len(weights) == 5
    assert [torch.equal(f[k], g[k]) for k in weights] == [judge_init == "shared"] * 5
    f_shared = built("shared").backbone.state_dict()
    assert all(torch.equal(f[k], f_shared[k]) for k in f)


def _strip(curve):
    return [{k: v for k, v in record.items() if k not in ("seconds", "cpu_seconds")} for record in curve]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("m2m")
    data = tiny_prepared(channels=3)
    return data, train(_cfg(tmp, "full"), data), tmp / "full"


def test_two_epochs_on_generated_data_train_g_then_translate(full_run):
    _, metrics, _ = full_run
    curve = metrics["curve"]
    assert [(r["stage"], r["epoch"]) for r in curve] == [("generator", 1), ("train", 1), ("train", 2)]
    assert curve[1]["attempted"] == curve[1]["translated"] == 0
    assert 0 < curve[2]["translated"] <= curve[2]["attempted"] < 1
    assert all(math.isfinite(r["loss"]) for r in curve)
    assert set(metrics["heads"]) == {"main"}


def test_killed_in_the_translating_epoch_resumes_exactly(full_run, tmp_path):
    data, full, full_folder = full_run
    cfg = _cfg(tmp_path, "killed")
    fit_until_interrupted(Trainer(cfg, data), lambda stage, epoch, started: stage == "train" and epoch == 1)
    resumed = Trainer(cfg, data).fit()
    assert resumed["heads"] == full["heads"]
    assert _strip(resumed["curve"]) == _strip(full["curve"])
    ours = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["method"]
    theirs = torch.load(full_folder / "checkpoint.pt", weights_only=True)["method"]
    assert any(k.startswith("judge.") for k in ours)  # g is in the checkpoint
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
