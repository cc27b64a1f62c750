"""tailshift.losses: every loss under a public name computes what the methods' loss of that config computes."""
import dataclasses
import inspect

import numpy as np
import pytest
import torch

from tailshift.losses import LOSS_CLASSES, DRWLoss, LDAMLoss, build_loss
from tailshift.methods.losses import LOSSES
from tailshift.methods.losses import build_loss as build_method_loss

COUNTS = [50, 20, 5, 2]

# name -> the public keyword arguments, all away from their defaults (a mix-up of two shows)
CASES = {
    "ce": {},
    "focal": {"gamma": 2.0, "activation": "sigmoid"},
    "ldam": {"max_margin": 0.3, "scale": 10.0},
    "la": {"tau": 1.5},
    "balanced-softmax": {},
    "class-balanced": {"beta": 0.99, "loss": "focal", "loss_params": {"gamma": 0.5}},
    "drw": {"start_epoch": 2, "beta": 0.999, "loss": "ldam", "loss_params": {"max_margin": 0.4}},
}


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 4, generator=g).tanh(), torch.randint(4, (12,), generator=g)


def test_every_registered_loss_has_a_public_class_exposing_all_its_params():
    assert sorted(LOSS_CLASSES) == sorted(LOSSES.names()) == sorted(CASES)
    for name, cls in LOSS_CLASSES.items():
        assert issubclass(cls, LOSSES.get(name))  # the methods' own module, not a copy
        keywords = [p.name for p in inspect.signature(cls).parameters.values() if p.kind is p.KEYWORD_ONLY]
        assert sorted(keywords) == sorted(f.name for f in dataclasses.fields(cls.Params)), name


@pytest.mark.parametrize("name", list(CASES))
def test_public_loss_equals_the_methods_loss_epoch_by_epoch(name):
    public = LOSS_CLASSES[name](COUNTS, **CASES[name])
    built = build_loss(name, COUNTS, **CASES[name])
    assert type(built) is type(public)
    internal = build_method_loss(name, np.array(COUNTS), CASES[name])
    for epoch in range(4):  # DRW switches its weights on at epoch 2
        values, grads = [], []
        for loss in (public, built, internal):
            loss.begin_epoch(epoch, 4)
            logits, targets = batch(epoch)
            logits.requires_grad_(True)
            value = loss(logits, targets)
            values.append(value.detach())
            grads.append(torch.autograd.grad(value, logits)[0])
        assert torch.equal(values[0], values[2]) and torch.equal(values[1], values[2]), (name, epoch)
        assert torch.equal(grads[0], grads[2]), (name, epoch)


def test_ldam_by_hand():
    logits, targets = batch()
    margins = np.array(COUNTS, float) ** -0.25
    margins *= 0.3 / margins.max()
    z = 10.0 * (logits.double().numpy() - np.eye(4)[targets.numpy()] * margins[targets.numpy(), None])
    expected = np.mean([np.log(np.exp(row).sum()) - row[y] for row, y in zip(z, targets.numpy())])
    assert float(LDAMLoss(COUNTS, max_margin=0.3, scale=10.0)(logits, targets)) == pytest.approx(expected, rel=1e-5)


def test_drw_weights_classes_from_its_start_epoch():
    logits, targets = batch()
    drw = DRWLoss(torch.tensor(COUNTS), start_epoch=1)
    drw.begin_epoch(0, 2)
    plain = drw(logits, targets)
    assert torch.equal(plain, torch.nn.functional.cross_entropy(logits, targets))
    drw.begin_epoch(1, 2)
    assert not torch.equal(drw(logits, targets), plain)


@pytest.mark.parametrize("make,fragment", [
    (lambda: LDAMLoss(COUNTS, max_margin=-1.0), "LDAMLoss.max_margin must be >= 0, got -1.0"),
    (lambda: LOSS_CLASSES["focal"](COUNTS, activation="tanh"), "FocalLoss.activation must be one of softmax, sigmoid"),
    (lambda: LOSS_CLASSES["class-balanced"](COUNTS, beta=1.0), "ClassBalancedLoss.beta must be in [0, 1), got 1.0"),
    (lambda: DRWLoss(COUNTS, loss="magic"), "DRWLoss.loss must be one of"),
    (lambda: build_loss("magic", COUNTS), "unknown loss 'magic'; known: balanced-softmax"),
    (lambda: build_loss("focal", COUNTS, gama=2.0), "unknown focal loss param 'gama'; known: gamma, activation"),
    (lambda: LOSS_CLASSES["ce"]([[50, 2]]), "class_counts must be a non-empty 1-d sequence of finite counts >= 0"),
    (lambda: LOSS_CLASSES["ce"]([50, -2]), "class_counts must be a non-empty 1-d sequence of finite counts >= 0"),
])
def test_bad_input_is_refused_in_one_line(make, fragment):
    with pytest.raises(ValueError) as refused:
        make()
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
