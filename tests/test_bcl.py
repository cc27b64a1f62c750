"""BCL's balanced contrastive loss against a hand loop, BCL / CSA + BCL steps against their formulas, the strong
views against the recipe (drawn from the stored image), the classifier, widths and weights of the Table 11 rows."""
import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_prepared
from tailshift.config import build_config
from tailshift.validation import ConfigError
from tailshift.data.pipeline import Batch, RawImages, random_crop_flip
from tailshift.data.strong_augment import color_jitter, crop_boxes, gaussian_blur, resized_crop_flip
from tailshift.engine import train
from tailshift.methods import METHODS, StepContext
from tailshift.methods.contrastive import BalancedContrastive, balanced_contrastive_loss
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


MEAN = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
STD = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)


def _batch(seed, n=8, stored=None):
    """A batch as the device pipeline gives it: ``x`` the normalised crop/flip of the stored uint8 images."""
    g = torch.Generator().manual_seed(seed)
    stored = torch.randint(0, 256, (n, 3, 28, 28), generator=g, dtype=torch.uint8) if stored is None else stored
    raw = RawImages(stored, MEAN, STD, torch.channels_last)
    x = raw.normalise(random_crop_flip(stored, 4, g).float() / 255)
    return Batch(x, torch.randint(10, (len(stored),), generator=g), torch.arange(len(stored)), True, raw)


def _ctx(method, seed):
    return StepContext(method.stages()[0], 0, 0, 0, torch.Generator().manual_seed(seed))


def test_bcl_step_is_alpha_la_plus_beta_contrastive_of_one_forward_of_the_batch_and_its_views():
    method = _method("bcl")
    method.eval()  # batch norm in running-statistics mode, so the hand forward sees the same network
    batch = _batch(0)
    out = method.training_step({"main": batch}, _ctx(method, 3))
    prior = torch.log(torch.as_tensor(COUNTS / COUNTS.sum(), dtype=torch.float32))
    with torch.no_grad():
        c = method.contrastive
        views = c.views(batch, torch.Generator().manual_seed(3))
        features = method.backbone(torch.cat([batch.x, views]))
        la = F.cross_entropy(method.head(features[:8]) + prior, batch.y)
        contrastive = c(features[8:], method.head.weight, batch.y)
    torch.testing.assert_close(out.loss.detach(), 2.0 * la + 0.6 * contrastive)


def test_bcl_classifies_with_30_cosines_and_mlps_as_wide_as_their_input():
    method = _method("bcl")
    x = torch.randn(5, method.backbone.out_dim)
    cosines = F.normalize(x, dim=1) @ F.normalize(method.head.weight, dim=1).T
    torch.testing.assert_close(method.head(x), 30.0 * cosines)
    width = method.backbone.out_dim
    for mlp in (method.contrastive.projection, method.contrastive.prototype_head):
        assert (mlp[0].in_features, mlp[0].out_features, mlp[3].out_features) == (width, width, 128)
    assert _method("bcl", classifier_scale=10.0).head.scale == 10.0
    assert isinstance(_method("bcl", classifier="linear").head, torch.nn.Linear)
    wide = _method("csa", contrastive_weight=1.0, contrastive_params={"hidden_dim": 512}).contrastive.projection
    assert (wide[0].in_features, wide[0].out_features) == (width, 512)


def test_csa_with_bcl_forwards_the_views_with_the_uniform_batch_and_adds_the_term():
    assert _method("csa").contrastive is None and _method("dual").contrastive is None
    method = _method("dual", uniform_loss="la", contrastive_weight=1.0)
    method.eval()
    batches = {"uniform": _batch(1), "balanced": _batch(2)}
    out = method.training_step(batches, _ctx(method, 4))
    uni = batches["uniform"]
    prior = torch.log(torch.as_tensor(COUNTS / COUNTS.sum(), dtype=torch.float32))
    with torch.no_grad():
        c = method.contrastive
        features = method.backbone(torch.cat([uni.x, c.views(uni, torch.Generator().manual_seed(4))]))
        la = F.cross_entropy(method.uniform_head(features[:8]) + prior, uni.y)
        contrastive = c(features[8:], method.uniform_head.weight, uni.y)
    torch.testing.assert_close(out.logs["loss_uniform"], la)
    torch.testing.assert_close(out.logs["loss_contrastive"], contrastive)
    torch.testing.assert_close(out.loss.detach(), la + out.logs["loss_balanced"] + contrastive)


def test_the_views_join_the_joint_forward_of_both_branches_too():
    # in eval mode batch norm uses its running statistics, so one forward of everything equals separate ones
    outs = []
    for joint in (False, True):
        method = _method("dual", uniform_loss="la", contrastive_weight=1.0, joint_forward=joint)
        method.eval()
        outs.append(method.training_step({"uniform": _batch(1), "balanced": _batch(2)}, _ctx(method, 4)))
    for key in ("loss_uniform", "loss_balanced", "loss_contrastive"):
        torch.testing.assert_close(outs[1].logs[key], outs[0].logs[key])


def _views(stored, **params):
    c = BalancedContrastive(64, 1.0, params)
    raw = RawImages(stored, None, None, torch.contiguous_format)
    return c.views(Batch(torch.zeros(len(stored), 3, 28, 28), torch.zeros(len(stored), dtype=torch.long),
                         torch.arange(len(stored)), True, raw), torch.Generator().manual_seed(0))


def test_the_views_come_from_the_stored_image_not_from_the_augmented_batch():
    # the stored images are bright only in their first 6 columns; the batch's crop has cut those away
    stored = torch.zeros(64, 3, 28, 28, dtype=torch.uint8)
    stored[..., :6] = 255
    batch = Batch(torch.zeros(64, 3, 28, 28), torch.zeros(64, dtype=torch.long), torch.arange(64), True,
                  RawImages(stored, None, None, torch.contiguous_format))
    views = BalancedContrastive(64, 1.0).views(batch, torch.Generator().manual_seed(0))
    assert views.shape == (128, 3, 28, 28)
    bright = views.amax(dim=(1, 2, 3)) > 0.5
    assert 0.5 < float(bright.float().mean()) < 1.0  # most views hold the stripe the weak crop cut away, not all
    first, second = views[:64], views[64:]
    assert not torch.equal(first, second)  # two independent views of each image


def test_the_views_crop_resize_jitter_and_grey_as_the_recipe_says():
    red = torch.zeros(200, 3, 16, 16, dtype=torch.uint8)
    red[:, 0] = 200
    grey = lambda v: (v.amax(dim=1) - v.amin(dim=1)).amax(dim=(1, 2)) < 1e-6  # noqa: E731
    views = _views(red)  # the CIFAR recipe: greyscale p 0.2, jitter p 0.8
    assert 0.14 < float(grey(views).float().mean()) < 0.26
    plain = _views(red, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    torch.testing.assert_close(plain, red.float().div(255).repeat(2, 1, 1, 1))  # a crop of a flat image is the image
    jittered = _views(red, jitter_p=1.0, grayscale_p=0.0, blur_p=0.0)
    assert not grey(jittered).any() and float((jittered[:, 0].mean(dim=(1, 2)) - 200 / 255).abs().max()) > 0.1
    assert float(grey(_views(red, jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)).float().mean()) == 1.0


def test_crop_boxes_draw_areas_in_the_scale_and_stay_inside():
    boxes = crop_boxes(4000, 32, 32, (0.2, 1.0), torch.Generator().manual_seed(0), "cpu")
    left, top, w, h = boxes.unbind(dim=1)
    share = w * h / 1024
    assert bool(((left >= 0) & (top >= 0) & (left + w <= 32) & (top + h <= 32)).all())
    assert float(share.min()) > 0.17 and 0.55 < float(share.mean()) < 0.65  # uniform in (0.2, 1), rounded
    assert float((w / h).min()) >= 0.7 and float((w / h).max()) <= 1.43


def test_a_resized_crop_is_the_crop_resized_and_blur_a_gaussian():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[4.0, 2.0, 16.0, 20.0]]).expand(4, 4)
    crop = F.interpolate(x[:, :, 2:22, 4:20], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized_crop_flip(x, box, torch.tensor([False, True, False, True])),
                               torch.stack([crop[0], crop[1].flip(2), crop[2], crop[3].flip(2)]))
    taps = torch.exp(-0.5 * torch.arange(-6, 7.0) ** 2)
    kernel = (taps[:, None] * taps[None, :]) / taps.sum() ** 2
    inner = F.conv2d(x.reshape(12, 1, 32, 32), kernel.view(1, 1, 13, 13)).view(4, 3, 20, 20)
    torch.testing.assert_close(gaussian_blur(x, torch.ones(4))[..., 6:-6, 6:-6], inner)


def test_color_jitter_makes_its_four_changes_in_each_images_own_order():
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    out = color_jitter(x, 0.4, 0.1, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the draws in color_jitter's order
    factors = [0.6 + 0.8 * torch.rand(6, generator=g) for _ in range(3)]
    shift = -0.1 + 0.2 * torch.rand(6, generator=g)
    order = torch.rand(6, 4, generator=g).argsort(dim=1)
    for i in range(6):
        image = x[i]
        for change in order[i].tolist():
            luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
            if change == 3:  # the hue turn, pixel by pixel
                hsv = [colorsys.rgb_to_hsv(*image[:, r, c].tolist()) for r in range(4) for c in range(4)]
                image = torch.tensor([colorsys.hsv_to_rgb((h + float(shift[i])) % 1, s, v) for h, s, v in hsv]).T.reshape(3, 4, 4)
            else:
                other = (torch.zeros(()), luma.mean(), luma)[change]
                image = (factors[change][i] * image + (1 - factors[change][i]) * other).clamp(0, 1)
        torch.testing.assert_close(out[i], image, atol=1e-5, rtol=0)


def test_views_need_the_stored_images():
    batch = Batch(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.arange(2), True)
    with pytest.raises(ValueError, match="use data.storage=device"):
        BalancedContrastive(64, 1.0).views(batch, torch.Generator())


def test_table11_rows_take_their_codes_settings():
    from tailshift.config import config_path, load_config

    bcl = load_config(config_path("table11/cifar100-lt_bcl")).method.params
    assert (bcl["classifier"], bcl["classifier_scale"], bcl["contrastive_params"]["hidden_dim"]) == ("cosine", 30.0, None)
    assert (bcl["loss_weight"], bcl["contrastive_weight"]) == (2.0, 0.6)
    csa = load_config(config_path("table11/cifar100-lt_csa-bcl")).method.params
    assert (csa["uniform_loss"], csa["uniform_weight"], csa["contrastive_weight"]) == ("la", 1.0, 1.0)  # the release's 1 and 1
    assert csa["contrastive_params"]["hidden_dim"] == 512 and "classifier" not in csa  # BCLHead: linear fc, hidden 512
    for params in (bcl, csa):
        views = params["contrastive_params"]
        assert (views["crop_scale"], views["jitter"], views["hue"], views["jitter_p"], views["grayscale_p"],
                views["blur_p"]) == (0.2, 0.4, 0.1, 0.8, 0.2, 0.5)


@pytest.mark.parametrize("name, params", [("bcl", {}), ("csa", {"warmup_epochs": 1, "delta": 0.0, "uniform_loss": "la",
                                                              "contrastive_weight": 0.6})])
def test_bcl_trains_end_to_end(name, params, tmp_path):
    cfg = build_config({"output": str(tmp_path), "progress": False, "method": {"name": name, "params": params}},
                       ["train.epochs=2", "train.batch_size=64", "train.eval_every=0"])
    metrics = train(cfg, tiny_prepared(channels=3))
    assert all(np.isfinite(r["loss"]) and r["loss_contrastive"] > 0 for r in metrics["curve"])


@pytest.mark.parametrize("name, params", [("bcl", {}), ("csa", {"contrastive_weight": 0.6})])
def test_host_storage_is_refused_before_any_training(name, params, tmp_path):
    cfg = build_config({"output": str(tmp_path / "run"), "progress": False, "method": {"name": name, "params": params}},
                       ["data.storage=host", "data.workers=0"])
    with pytest.raises(ConfigError, match=f"^method {name} draws its views from the stored images, which "
                                          "data.storage=host does not keep with a batch: use data.storage=device$"):
        train(cfg, tiny_prepared(channels=3))
    assert not (tmp_path / "run").exists()


def test_csa_without_the_contrastive_term_takes_host_storage():
    assert not _method("csa").reads_stored_images() and _method("csa", contrastive_weight=0.6).reads_stored_images()
