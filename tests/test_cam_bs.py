"""CAM-BS (methods/cam_bs.py) against hand computations of BagofTricks-LT's rules, and the engine's
``makes_data`` stage it runs on: generation cached in the run folder, recorded in the checkpoint, reused
on resume."""
import dataclasses
import shutil
from bisect import bisect_right

import numpy as np
import pytest
import torch

from conftest import fit_until_interrupted, tiny_prepared
from tailshift.config import build_config, config_path, load_config
from tailshift.engine import CheckpointMismatchError, Trainer, learning_rate, train
from tailshift.methods import METHODS
from tailshift.methods.cam_bs import (CamBalanceSampling, cam_image, draw_transforms, first_two, foreground_mask,
                                      generated_counts, paste_foreground, rotation_matrices, translation_matrices,
                                      warp)
from tailshift.models import create_model
from tailshift.reproduce.table2 import PAPER_RECIPES, recipe_overrides
from tailshift.validation import ConfigError

MADE = "made/cam-generation_images.npy", "made/cam-generation_labels.npy"


# --- the rules, by hand -----------------------------------------------------------------------------
def test_generated_counts_fill_every_class_to_n_max_plus_n_min():
    assert generated_counts([10, 6, 3]).tolist() == [3, 7, 10]  # 10 + 3 - n: the largest class gets n_min too
    cifar10_lt = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])  # rho 100
    made = generated_counts(cifar10_lt)
    assert made.tolist() == [50, 2053, 3254, 3973, 4405, 4663, 4818, 4911, 4967, 5000]
    assert made.sum() == 38094 and set(made + cifar10_lt) == {5050}
    with pytest.raises(ValueError, match=r"needs at least one image of every class, got counts \[4, 0, 2\]"):
        generated_counts([4, 0, 2])


def test_the_non_cifar_cap_skips_classes_at_the_cap_and_caps_the_others():
    # ImageNet-LT's CAM_NUMBER_THRES 100: n_max 1280, n_min 5; classes of >= 100 images get none
    assert generated_counts([1280, 400, 100, 99, 20, 5], cap=100).tolist() == [0, 0, 0, 100, 100, 100]
    assert generated_counts([10, 6, 3], cap=8).tolist() == [0, 7, 8]
    assert generated_counts([10, 6, 3], cap=0).tolist() == generated_counts([10, 6, 3]).tolist()


def test_foreground_is_the_cam_at_least_three_quarters_of_its_mean():
    cam = torch.tensor([[[0.0, 40.0, 45.0], [75.0, 120.0, 80.0]]])  # mean 60: threshold 45, kept (>=) at 45
    assert foreground_mask(cam).tolist() == [[[False, False, True], [True, True, True]]]


def test_cam_image_is_min_max_truncated_to_uint8_then_resized_bilinearly():
    feature_map = torch.tensor([[[[0.0, 1.0], [1.0, 2.0]]]])  # one channel; w = 1: CAM = A
    cam = cam_image(feature_map, torch.ones(1, 1), torch.tensor([0]), (4, 4))[0]
    # min-max [[0, .5], [.5, 1]] -> floor(255 x) [[0, 127], [127, 255]] (127.5 truncated, as np.uint8 does)
    # -> half-pixel bilinear 2 -> 4: each row/column at weights (1, 0), (.75, .25), (.25, .75), (0, 1), rounded
    assert cam[0].tolist() == [0.0, 32.0, 95.0, 127.0]  # 31.75, 95.25
    assert cam[1, 1] == 64.0  # .75 (.75 * 0 + .25 * 127) + .25 (.75 * 127 + .25 * 255) = 63.5625
    assert cam[3, 3] == 255.0


def test_first_two_are_the_first_and_second_hits_as_the_original_loops_stop():
    flags = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    first, second = first_two(flags)
    assert first.tolist() == [1, 2, -1] and second.tolist() == [3, -1, -1]


def test_rotation_is_cv2s_counter_clockwise_about_the_centre():
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 1, 2] = 1.0  # x = 2, y = 1: right of the centre
    m = rotation_matrices(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([90.0]), torch.tensor([1.0]))
    assert torch.allclose(m, torch.tensor([[[0.0, 1.0, 0.0], [-1.0, 0.0, 2.0]]]), atol=1e-7)  # getRotationMatrix2D
    moved = warp(image, m.float())
    assert moved[0, 0, 0, 1] == pytest.approx(1.0, abs=1e-6) and moved.sum() == pytest.approx(1.0, abs=1e-6)  # to the top


def tiny_scene():
    image = (torch.arange(16, dtype=torch.uint8) + 1).view(1, 1, 4, 4)  # pixel (r, c) = 4 r + c + 1
    cam = torch.zeros(1, 4, 4)
    cam[0, 1, 0] = cam[0, 1, 1] = 200.0  # mean 25: the foreground is (1, 0) and (1, 1)
    return image, cam


def test_translate_pastes_the_moved_foreground_onto_the_image():
    image, cam = tiny_scene()
    out = paste_foreground(image, cam, torch.tensor([1]), translation_matrices(torch.tensor([2.0]), torch.tensor([1.0])))
    expected = image.clone()
    expected[0, 0, 2, 2], expected[0, 0, 2, 3] = image[0, 0, 1, 0], image[0, 0, 1, 1]  # moved 2 right, 1 down
    # where the foreground was, the shifted image holds nothing (0): the image itself shows
    assert out.dtype == torch.uint8 and out.tolist() == expected.tolist()


def test_a_zero_in_the_pasted_layer_shows_the_image_beneath():
    image, cam = tiny_scene()
    image[0, 0, 1, 0] = 0
    out = paste_foreground(image, cam, torch.tensor([1]), translation_matrices(torch.tensor([2.0]), torch.tensor([1.0])))
    assert out[0, 0, 2, 2] == image[0, 0, 2, 2] and out[0, 0, 2, 3] == image[0, 0, 1, 1]


def test_flip_pastes_the_mirrored_image_where_the_foreground_was_or_went():
    image, cam = tiny_scene()
    out = paste_foreground(image, cam, torch.tensor([2]), translation_matrices(torch.zeros(1), torch.zeros(1)))  # unused
    expected = image.clone()
    expected[0, 0, 1] = image[0, 0, 1].flip(0)  # foreground (1, 0..1) and its mirror (1, 2..3): the whole row
    assert out.tolist() == expected.tolist()


def test_transforms_are_drawn_in_the_originals_ranges_about_its_box():
    cam = torch.zeros(3000, 5, 5)
    cam[:, 1:4, 1:4] = 200.0  # foreground rows and columns 1..3: the box is (1, 2) x (1, 2) (second hit)
    kinds, m = draw_transforms(cam, torch.Generator().manual_seed(0))
    share = torch.bincount(kinds, minlength=3).float() / len(kinds)
    assert torch.all((share > 0.3) & (share < 0.37))
    shift = m[kinds == 1]
    for axis in (0, 1):  # randint(-1, 5 - 2): -1 .. 2
        assert set(shift[:, axis, 2].tolist()) == {-1.0, 0.0, 1.0, 2.0}
    rotate = m[kinds == 0]
    centre = torch.tensor([1.5, 1.5, 1.0], dtype=rotate.dtype)  # ((1 + 2) / 2, (1 + 2) / 2): a fixed point
    assert torch.allclose(rotate @ centre, centre[:2].expand(len(rotate), 2))
    degrees = torch.rad2deg(torch.atan2(rotate[:, 0, 1], rotate[:, 0, 0])).round()
    scale = torch.hypot(rotate[:, 0, 0], rotate[:, 0, 1])
    assert degrees.min() == -45 and degrees.max() == 44  # randint(-45, 45)
    assert set((scale * 100).round().long().tolist()) == set(range(80, 120))  # randint(80, 120) / 100


# --- the recipe ----------------------------------------------------------------------------------------
def warmup_multistep(epoch, lr, milestones, warmup=5):
    """BagofTricks-LT lib/utils/lr_scheduler.py WarmupMultiStepLR.get_lr (gamma 0.01, warm-up factor 1/3),
    stepped before each 1-based epoch k = epoch + 1 (main/train.py line 277); warmup 0: MultiStepLR."""
    k = epoch + 1
    factor = 1.0
    if k < warmup:
        factor = 1.0 / 3 * (1 - k / warmup) + k / warmup
    return lr * factor * 0.01 ** bisect_right(milestones, k)


def stages_of(cfg):
    key = (cfg.train.epochs, tuple(sorted((k, str(v)) for k, v in cfg.method.params.items())))
    if key not in STAGES:
        backbone = create_model(cfg.model.name, in_channels=3, image_size=32)
        STAGES[key] = CamBalanceSampling(backbone, 10, np.ones(10), cfg.train.epochs, cfg.method.params).stages()
    return STAGES[key]


STAGES = {}


def paper_config(dataset, *extra):
    return load_config(config_path(f"table2/{dataset}_cam-bs"),
                       [*recipe_overrides(PAPER_RECIPES["cam-bs"], dataset, "cam-bs"), *extra])


def ours(cfg, stage_index, epoch):
    stage = stages_of(cfg)[stage_index]
    o = cfg.train.optim
    o = dataclasses.replace(o, milestones=stage.milestones, gamma=stage.gamma) if stage.milestones is not None else o
    return learning_rate(o, stage.lr or o.lr, stage.schedule or o.schedule, stage.epochs, epoch + 0.5,
                         warmup=stage.warmup)


@pytest.mark.parametrize("dataset", ["cifar10-lt", "cifar100-lt"])
def test_paper_recipe_follows_bag_of_tricks_in_both_stages(dataset):
    cfg = paper_config(dataset)
    assert cfg.train.epochs == 160 and cfg.train.optim.nesterov and cfg.train.optim.momentum == 0.9
    for epoch in range(160):  # first_stage: warm-up from 1/3, x0.01 from k = 160 (its last epoch)
        assert ours(cfg, 0, epoch) == pytest.approx(warmup_multistep(epoch, 0.1, [160, 180]), rel=1e-9), epoch
    warm = 5 if dataset == "cifar100-lt" else 0  # second_stage: warmup (CIFAR-100) or multistep (CIFAR-10)
    for epoch in range(40):
        assert ours(cfg, 2, epoch) == pytest.approx(warmup_multistep(epoch, 0.001, [20], warm), rel=1e-9), epoch


@pytest.mark.parametrize("dataset, change", [("cifar10-lt", "train.optim.milestones=[150, 180]"),
                                             ("cifar10-lt", "method.params.second_milestones=[20]"),
                                             ("cifar100-lt", "method.params.second_gamma=0.1")])
def test_a_changed_milestone_or_factor_is_caught(dataset, change):
    cfg = paper_config(dataset, change)
    warm = 5 if dataset == "cifar100-lt" else 0
    assert (any(ours(cfg, 0, e) != pytest.approx(warmup_multistep(e, 0.1, [160, 180]), rel=1e-9) for e in range(160))
            or any(ours(cfg, 2, e) != pytest.approx(warmup_multistep(e, 0.001, [20], warm), rel=1e-9) for e in range(40)))


# --- end to end, resume, cache --------------------------------------------------------------------------
PREPARED = tiny_prepared(channels=3, size=16, counts=(30, 20, 12, 8, 6, 5, 4, 3, 3, 3))


def cfg_for(tmp_path, name="run", *extra):
    return build_config({"output": str(tmp_path / name), "progress": False},
                        ["model.name=resnet20", "train.epochs=1", "train.batch_size=32", "train.eval_every=0",
                         "train.optim.lr=0.05", "method.name=cam-bs",
                         "method.params={second_epochs: 2, second_milestones: [1]}", *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cam_bs")
    trainer = Trainer(cfg_for(folder, "full"), PREPARED)
    seen = []
    original = trainer._train_epoch

    def spy(stage, stage_index, epoch, samplers, steps, optimizer, feed, training_step):
        seen.append((stage.name, steps, len(feed)))
        return original(stage, stage_index, epoch, samplers, steps, optimizer, feed, training_step)

    trainer._train_epoch = spy
    return folder / "full", trainer.fit(), seen


def test_cam_bs_is_listed():
    assert "cam-bs" in METHODS.names()


def test_end_to_end_first_generation_then_balanced_second_stage(full_run):
    folder, metrics, seen = full_run
    counts = PREPARED.class_counts
    made = generated_counts(counts)
    images, labels = np.load(folder / MADE[0]), np.load(folder / MADE[1])
    assert images.dtype == np.uint8 and images.shape == (made.sum(), 3, 16, 16)
    assert np.bincount(labels).tolist() == made.tolist()
    n = len(PREPARED.train.labels)
    # stage 2 draws from the split and the made images; an epoch stays as long as the split's
    assert seen == [("first", seen[0][1], n), ("second", seen[0][1], n + made.sum()), ("second", seen[0][1], n + made.sum())]
    assert [(r["stage"], r["lr"]) for r in metrics["curve"]] == [("first", 0.05), ("second", 0.001),
                                                                   ("second", pytest.approx(1e-5))]
    assert all(np.isfinite(r["loss"]) for r in metrics["curve"]) and set(metrics["heads"]) == {"main"}
    payload = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert payload["made"]["cam-generation"]["count"] == made.sum()


def test_the_cap_reaches_the_generation_stage(tmp_path):
    cfg = cfg_for(tmp_path, "capped", "method.params.number_cap=8")
    fit_until_interrupted(Trainer(cfg, PREPARED), lambda stage, epoch, started: stage == "second")
    labels = np.load(tmp_path / "capped" / MADE[1])  # counts 30 .. 3: classes of >= 8 images get none
    assert np.bincount(labels, minlength=10).tolist() == [0, 0, 0, 0, 8, 8, 8, 8, 8, 8]


def strip(curve):
    return [{k: v for k, v in e.items() if k not in ("seconds", "cpu_seconds")} for e in curve]


def killed_at_second_stage(tmp_path, name):
    """A run stopped as stage 2 starts, after the generation stage's checkpoint."""
    cfg = cfg_for(tmp_path, name)
    fit_until_interrupted(Trainer(cfg, PREPARED), lambda stage, epoch, started: stage == "second")
    return cfg


def test_resume_after_generation_reuses_the_cache_exactly(full_run, tmp_path, monkeypatch):
    folder, full, _ = full_run
    cfg = killed_at_second_stage(tmp_path, "killed")
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["stage_index"] == 2
    made_before = (tmp_path / "killed" / MADE[0]).stat().st_mtime_ns

    def never(*args):
        raise AssertionError("the cached images are made again")

    monkeypatch.setattr(CamBalanceSampling, "make_data", never)
    resumed = Trainer(cfg, PREPARED).fit()
    assert (tmp_path / "killed" / MADE[0]).stat().st_mtime_ns == made_before
    assert resumed["heads"] == full["heads"] and strip(resumed["curve"]) == strip(full["curve"])
    for name in MADE:
        assert (tmp_path / "killed" / name).read_bytes() == (folder / name).read_bytes()


def test_a_run_killed_during_generation_makes_the_same_images_again(full_run, tmp_path, monkeypatch):
    folder, full, _ = full_run
    cfg = cfg_for(tmp_path, "killed")
    original = CamBalanceSampling.make_data

    def dies_after_a_chunk(self, *args):
        made = original(self, *args)

        def chunks():
            yield next(iter(made.chunks))
            raise KeyboardInterrupt
        return dataclasses.replace(made, chunks=chunks())

    monkeypatch.setattr(CamBalanceSampling, "make_data", dies_after_a_chunk)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, PREPARED).fit()
    assert not (tmp_path / "killed" / MADE[0]).exists()  # written atomically: nothing half-made is left
    monkeypatch.setattr(CamBalanceSampling, "make_data", original)
    resumed = Trainer(cfg, PREPARED).fit()
    assert resumed["heads"] == full["heads"] and strip(resumed["curve"]) == strip(full["curve"])
    assert (tmp_path / "killed" / MADE[0]).read_bytes() == (folder / MADE[0]).read_bytes()


def test_a_changed_or_missing_cache_is_refused_in_one_line(tmp_path):
    killed_at_second_stage(tmp_path, "killed")
    shutil.copytree(tmp_path / "killed", tmp_path / "changed")
    shutil.copytree(tmp_path / "killed", tmp_path / "missing")
    images = tmp_path / "changed" / MADE[0]
    data = bytearray(images.read_bytes())
    data[-1] ^= 1
    images.write_bytes(bytes(data))
    (tmp_path / "missing" / MADE[1]).unlink()
    for name, reason in (("changed", "are not those the checkpoint recorded"), ("missing", "are unreadable")):
        with pytest.raises(CheckpointMismatchError, match=reason) as err:
            Trainer(cfg_for(tmp_path, name), PREPARED).fit()
        assert "\n" not in str(err.value) and "--fresh" in str(err.value)


def test_host_storage_is_refused_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match="stage 'cam-generation' of method cam-bs makes images from the training "
                                          "split on the device; data.storage=host keeps it on the host"):
        train(cfg_for(tmp_path, "host", "data.storage=host", "data.workers=0"), PREPARED)
    assert not (tmp_path / "host").exists()


def test_a_stage_that_makes_data_trains_nothing():
    from tailshift.methods.base import Stage, StreamRequest

    with pytest.raises(ValueError, match="stage 'gen' makes data: it has no streams and no epochs"):
        Stage("gen", 1, {}, makes_data=True)
    with pytest.raises(ValueError, match="stage 'gen' makes data: it has no streams and no epochs"):
        Stage("gen", 0, {"main": StreamRequest("uniform")}, makes_data=True)
    assert Stage("gen", 0, {}, makes_data=True).driver is None
