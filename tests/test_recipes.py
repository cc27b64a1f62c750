"""Each named recipe's learning rate against its authors' schedule code, written out here: the value the
authors' code sets for an epoch (0-based) against ours at the end of that epoch (our warm-up and the smooth
cosine move per step; the authors' codes set the rate once an epoch, and ours reaches it as the epoch ends)."""
import math
from bisect import bisect_right

import pytest

from tailshift.config import config_path, load_config
from tailshift.engine import learning_rate
from tailshift.reproduce.table2 import RECIPES, recipe_overrides

EPOCHS = (0, 4, 5, 119, 120, 159, 160, 179, 180, 199)


def warmup_then_steps(epoch, lr, after_160, after_180):
    """The adjust_learning_rate form shared by LDAM-DRW's and MiSLAS's cifar code: on 1-based epoch e, lr * e / 5
    for e <= 5, lr * after_180 past epoch 180, lr * after_160 past 160, else lr."""
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    if epoch > 180:
        return lr * after_180
    if epoch > 160:
        return lr * after_160
    return lr


def ldam(epoch, lr=0.1):
    """kaidic/LDAM-DRW cifar_train.py adjust_learning_rate (lines 366-376), args.lr = 0.1."""
    return warmup_then_steps(epoch, lr, 0.01, 0.0001)


def mislas(epoch, lr=0.1):
    """dvlab-research/MiSLAS train_stage1.py adjust_learning_rate (lines 433-451), cos False, lr 0.1."""
    return warmup_then_steps(epoch, lr, 0.1, 0.01)


def csa_release(epoch, lr=0.2):
    """The CSA release's settings (paper App. B: lr 0.2, 5 warm-up epochs, x0.1 at 160 and 180) in cifar_train.py's form."""
    return warmup_then_steps(epoch, lr, 0.1, 0.01)


def bbn(epoch, lr=0.1):
    """Megvii-Nanjing/BBN WarmupMultiStepLR.get_lr (lib/utils/lr_scheduler.py), milestones [120, 160], gamma
    0.01, warmup_epochs 5, warmup_factor 1/3, stepped at the start of 1-based epoch k (main/train.py)."""
    last_epoch = epoch + 1
    warmup_factor = 1
    if last_epoch < 5:
        alpha = float(last_epoch) / 5
        warmup_factor = 1.0 / 3 * (1 - alpha) + alpha
    return lr * warmup_factor * 0.01 ** bisect_right([120, 160], last_epoch)


def mislas_stage2(epoch, lr=0.1, lr_factor=0.5, num_epochs=10):
    """MiSLAS train_stage2.py adjust_learning_rate (lines 452-462): the classifier's group (idx 0)."""
    lr_min, lr_max = 0, lr
    return lr_factor * (lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(epoch / num_epochs * 3.1415926535)))


def kang_stage2(epoch, lr=0.2, num_epochs=10, eta_min=0.0):
    """classifier-balancing: CosineAnnealingLR(T_max=num_epochs, eta_min=endlr) stepped before 1-based epoch k."""
    k = epoch + 1
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * k / num_epochs)) / 2


STAGE1 = {"csa-release": csa_release, "ldam": ldam, "mislas": mislas, "bbn": bbn}


def config(recipe, dataset="cifar10-lt", run="ce", extra=()):
    return load_config(config_path(f"table2/{dataset}_{run}"), [*recipe_overrides(recipe, dataset, run), *extra])


def ours_stage1(cfg, epoch):
    o = cfg.train.optim
    return learning_rate(o, o.lr, o.schedule, cfg.train.epochs, epoch + 1 - 1e-9, o.cosine_period or cfg.train.epochs)


def ours_stage2(cfg, epoch):
    o, p = cfg.train.optim, cfg.method.params
    return learning_rate(o, p["retrain_lr"], p.get("retrain_schedule", "constant"), p["retrain_epochs"],
                         epoch + 1 - 1e-9, o.cosine_period or cfg.train.epochs, warmup=False)


def test_every_recipe_is_tested():
    assert set(RECIPES) == set(STAGE1) | {"kang", "bag-of-tricks"}  # bag-of-tricks: tests/test_cam_bs.py


@pytest.mark.parametrize("recipe", sorted(STAGE1))
def test_stage1_learning_rate_follows_the_authors_code(recipe):
    cfg = config(recipe)
    for epoch in EPOCHS:
        assert ours_stage1(cfg, epoch) == pytest.approx(STAGE1[recipe](epoch), rel=1e-6), (recipe, epoch)


def test_bbn_sets_its_rate_once_an_epoch_from_a_third_of_it():
    cfg = config("bbn")
    for epoch in (0, 1, 3, 4, 118, 119, 158, 159):
        for into in (0.0, 0.5):
            o = cfg.train.optim
            assert learning_rate(o, o.lr, o.schedule, 200, epoch + into) == pytest.approx(bbn(epoch), rel=1e-12)
    assert bbn(0) == pytest.approx(0.1 * 7 / 15)


@pytest.mark.parametrize("recipe", sorted(STAGE1))
@pytest.mark.parametrize("change", ["train.optim.gamma=0.1", "train.optim.gamma=0.01", "train.optim.milestones=[150, 180]",
                                    "train.optim.milestones=[120, 160]"])
def test_a_changed_factor_or_milestone_is_caught(recipe, change):
    cfg = config(recipe, extra=[change])
    original = config(recipe)
    if cfg == original:
        return  # the change is the recipe's own value
    assert any(ours_stage1(cfg, e) != pytest.approx(STAGE1[recipe](e), rel=1e-6) for e in EPOCHS)


# cRT re-trains the classifier, MiSLAS's first group (lr_factor x lr); LWS the scales, its second (1.00 x lr)
@pytest.mark.parametrize("dataset, run, lr_factor", [("cifar10-lt", "crt", 0.5), ("cifar100-lt", "crt-mixup", 0.2),
                                                     ("cifar10-lt", "lws-mixup", 1.0), ("cifar100-lt", "lws", 1.0)])
def test_mislas_stage2_follows_the_authors_code(dataset, run, lr_factor):
    cfg = config("mislas", dataset, run)
    assert cfg.method.params["retrain_epochs"] == 10
    for epoch in range(10):
        assert ours_stage2(cfg, epoch) == pytest.approx(mislas_stage2(epoch, lr_factor=lr_factor), rel=1e-9)


@pytest.mark.parametrize("run, epochs", [("crt", 10), ("lws-mixup", 5)])  # cls_crt.yaml: 10 epochs; cls_lws.yaml: 5
def test_kang_stage2_follows_the_authors_code(run, epochs):
    cfg = config("kang", "cifar100-lt", run)
    assert cfg.train.optim == config("csa-release", "cifar100-lt", run).train.optim  # stage 1 unchanged
    assert cfg.method.params["retrain_epochs"] == epochs
    for epoch in range(epochs):
        assert ours_stage2(cfg, epoch) == pytest.approx(kang_stage2(epoch, num_epochs=epochs), rel=1e-6, abs=1e-12)


def test_a_recipe_without_stage2_keeps_the_rows_and_stage1_rows_ignore_stage2():
    assert config("ldam", run="crt").method.params["retrain_lr"] == 0.2
    assert "retrain_lr" not in config("mislas", run="ce").method.params


def test_recipe_paper_puts_each_row_on_its_authors_recipe_in_its_own_folder():
    from tailshift.reproduce.table2 import TABLE2, recipe_choice

    studies = TABLE2.studies(["cifar10-lt"], [100])
    rows = TABLE2.select_rows(["ldam-drw", "bbn", "crt", "csa"])
    shared = TABLE2.plan(studies, rows, (0,), (), recipe_choice("shared")).variants
    paper = TABLE2.plan(studies, rows, (0,), (), recipe_choice("paper")).variants
    assert shared == TABLE2.plan(studies, rows, (0,), ()).variants  # shared: today's runs, folders and configs
    key = ("cifar10-lt rho 100", "ldam-drw")
    assert paper[key].folder == "cifar10-lt-rho100/ldam/ldam-drw" and "train.optim.gamma=0.01" in paper[key].overrides
    assert paper["cifar10-lt rho 100", "bbn"].folder == "cifar10-lt-rho100/bbn/bbn"
    assert paper["cifar10-lt rho 100", "crt"].folder == "cifar10-lt-rho100/kang/crt"
    assert paper["cifar10-lt rho 100", "csa"] == shared["cifar10-lt rho 100", "csa"]
    kang = TABLE2.plan(studies, rows, (0,), (), recipe_choice("kang")).variants  # kang's stage 1 is csa-release's
    assert kang["cifar10-lt rho 100", "bbn"] == shared["cifar10-lt rho 100", "bbn"]
    assert kang["cifar10-lt rho 100", "crt"].folder == "cifar10-lt-rho100/kang/crt"
    with pytest.raises(ValueError, match="unknown recipe 'adam'; known: paper, shared, csa-release, ldam"):
        recipe_choice("adam")


@pytest.mark.parametrize("recipe, run, reinit", [
    ("kang", "crt", True), ("kang", "crt-mixup", True),  # classifier-balancing: cRT's classifier is not loaded
    ("mislas", "crt", False), ("mislas", "crt-mixup", False),  # MiSLAS: stage 2 goes on from the stage-1 classifier
    ("csa-release", "crt", False)])
def test_each_recipe_says_whether_crt_starts_a_fresh_classifier(recipe, run, reinit):
    for dataset in ("cifar10-lt", "cifar100-lt"):
        assert config(recipe, dataset, run).method.params["reinit"] is reinit, (recipe, dataset, run)



@pytest.mark.parametrize("reinit", [True, False])
def test_crt_reinit_starts_stage2_from_a_fresh_classifier_else_from_the_stage1_one(reinit):
    import numpy as np
    import torch

    from tailshift.methods import METHODS
    from tailshift.models import create_model

    torch.manual_seed(0)
    method = METHODS.get("crt")(create_model("lenet2d", in_channels=3, image_size=28), 10, np.arange(10, 0, -1), 2,
                                {"retrain_epochs": 1, "reinit": reinit})
    with torch.no_grad():
        method.head.weight.add_(1.0)  # stage 1's classifier, moved away from any fresh initialisation
    retrain = method.stages()[1]
    method.begin_stage(retrain, fresh=True)
    assert torch.equal(method.retrained.weight, method.head.weight) is not reinit


@pytest.mark.parametrize("recipe, run, bn", [("kang", "crt", "train"), ("kang", "lws", "train"), ("mislas", "crt-mixup", "eval"),
                                             ("mislas", "lws-mixup", "eval"), ("csa-release", "crt", "eval")])
def test_each_recipe_says_how_the_frozen_backbones_batch_norm_runs_in_stage2(recipe, run, bn):
    from tailshift.resolve import resolve_run

    assert resolve_run(config(recipe, "cifar10-lt", run)).params.retrain_bn == bn


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_stage2_batch_norm_follows_the_balanced_batches_only_in_train_mode(bn):
    import numpy as np
    import torch

    from tailshift.data.pipeline import Batch
    from tailshift.methods import METHODS, StepContext
    from tailshift.models import create_model

    torch.manual_seed(0)
    method = METHODS.get("crt")(create_model("resnet20"), 10, np.arange(10, 0, -1), 1,
                                {"retrain_epochs": 1, "retrain_bn": bn})
    retrain = method.stages()[1]
    method.begin_stage(retrain, fresh=True)
    method.train_mode(retrain)
    norm = next(m for m in method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = norm.running_mean.clone()
    batch = Batch(torch.randn(8, 3, 32, 32) + 3.0, torch.arange(8), torch.arange(8))  # not augmented: cacheable
    for step in range(2):
        method.training_step({"main": batch}, StepContext(retrain, 1, 0, step, torch.Generator()))
    assert torch.equal(norm.running_mean, before) is (bn == "eval")
    assert (method._cache is None) is (bn == "train")  # features of a train-mode backbone are never cached
