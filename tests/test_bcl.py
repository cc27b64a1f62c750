"""BCL's balanced contrastive loss against a hand loop, and BCL / CSA + BCL steps against their formulas."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_prepared
from tailshift.config import build_config
from tailshift.data.pipeline import Batch
from tailshift.engine import train
from tailshift.methods import METHODS, StepContext
from tailshift.methods.contrastive import balanced_contrastive_loss
from tailshift.models import create_model

COUNTS = np.array([60, 40, 30, 20, 15, 10, 10, 6, 5, 4])


def hand_loss(views, prototypes, targets, temperature):
    n, b = len(views), len(targets)
    labels = list(targets) * 2 + list(range(len(prototypes)))
    cands = list(views) + list(prototypes)
    total = 0.0
    for i in range(n):
        sims = [float(np.dot(views[i], c)) / temperature for c in cands]
        denominator = 0.0
        for k in set(labels):
            members = [j for j, label in enumerate(labels) if label == k and j != i]
            if members:
                denominator += sum(math.exp(sims[j]) for j in members) / len(members)
        positives = [j for j, label in enumerate(labels) if label == labels[i] and j != i]
        total += -sum(sims[p] - math.log(denominator) for p in positives) / len(positives)
    return total / n


def test_balanced_contrastive_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    views = F.normalize(torch.randn(6, 5, generator=g), dim=1)  # B = 3, two views each
    prototypes = F.normalize(torch.randn(4, 5, generator=g), dim=1)
    targets = torch.tensor([0, 2, 0])
    got = balanced_contrastive_loss(views, prototypes, targets, 0.5)
    assert float(got) == pytest.approx(hand_loss(views.numpy(), prototypes.numpy(), targets.tolist(), 0.5), rel=1e-5)


def _method(name, **params):
    torch.manual_seed(0)
    return METHODS.get(name)(create_model("lenet2d", in_channels=3, image_size=28), 10, COUNTS, 10, params)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(8, 3, 28, 28, generator=g), torch.randint(10, (8,), generator=g), torch.arange(8))


def test_bcl_step_is_alpha_la_plus_beta_contrastive():
    method = _method("bcl")
    method.eval()  # batch norm of the MLPs in running-statistics mode, so the hand forward sees the same network
    batch = _batch(0)
    out = method.training_step({"main": batch}, StepContext(method.stages()[0], 0, 0, 0, torch.Generator().manual_seed(3)))
    prior = torch.log(torch.as_tensor(COUNTS / COUNTS.sum(), dtype=torch.float32))
    with torch.no_grad():
        la = F.cross_entropy(method.head(method.backbone(batch.x)) + prior, batch.y)
        c = method.contrastive
        views = F.normalize(c.projection(method.backbone(c.views(batch.x, torch.Generator().manual_seed(3)))), dim=1)
        protos = F.normalize(c.prototype_head(method.head.weight), dim=1)
        contrastive = balanced_contrastive_loss(views, protos, batch.y, 0.1)
    torch.testing.assert_close(out.loss.detach(), 2.0 * la + 0.6 * contrastive)


def test_csa_with_bcl_adds_the_contrastive_term_and_plain_csa_builds_none():
    assert _method("csa").contrastive is None and _method("dual").contrastive is None
    method = _method("dual", uniform_loss="la", uniform_weight=2.0, contrastive_weight=0.6)
    method.eval()
    batches = {"uniform": _batch(1), "balanced": _batch(2)}
    out = method.training_step(batches, StepContext(method.stages()[0], 0, 0, 0, torch.Generator().manual_seed(4)))
    with torch.no_grad():
        c = method.contrastive
        views = F.normalize(c.projection(method.backbone(c.views(batches["uniform"].x, torch.Generator().manual_seed(4)))), dim=1)
        contrastive = balanced_contrastive_loss(views, F.normalize(c.prototype_head(method.uniform_head.weight), dim=1),
                                                batches["uniform"].y, 0.1)
    torch.testing.assert_close(out.logs["loss_contrastive"], contrastive)
    torch.testing.assert_close(out.loss.detach(), 2.0 * out.logs["loss_uniform"] + out.logs["loss_balanced"] + 0.6 * contrastive)


@pytest.mark.parametrize("name, params", [("bcl", {}), ("csa", {"warmup_epochs": 1, "delta": 0.0, "uniform_loss": "la",
                                                              "contrastive_weight": 0.6})])
def test_bcl_trains_end_to_end(name, params, tmp_path):
    cfg = build_config({"output": str(tmp_path), "progress": False, "method": {"name": name, "params": params}},
                       ["train.epochs=2", "train.batch_size=64", "train.eval_every=0"])
    metrics = train(cfg, tiny_prepared(channels=3))
    assert all(np.isfinite(r["loss"]) and r["loss_contrastive"] > 0 for r in metrics["curve"])
