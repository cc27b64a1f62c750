"""Bad inputs to `tailshift train`, one table (issue 12).

Each case must be refused with exit status 2 and one line naming the key or file and what is
allowed, before any training step, leaving the run folder as it was (absent, or unchanged
file by file). Cases whose id starts with "issue-" are the ones the issue found failing.
The data files are tiny and generated once for the module.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from tailshift import cli
from tailshift.engine import Trainer
from tailshift.io import LOCK_NAME, RunLock
from test_sources import _Touch, idx_bytes, make_cifar10, write_idx, write_pickle

RNG = np.random.default_rng(12)


# ----------------------------------------------------------------------------- the data, built once

def npz(path: Path, train_labels, test_labels, size=28, test_size=None, channels=None, **extra) -> None:
    def images(n, side):
        shape = (n, side, side) if channels is None else (n, side, side, channels)
        return RNG.integers(0, 256, shape, dtype=np.uint8)

    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    np.savez(path, x_train=images(len(train_labels), size), y_train=train_labels,
             x_test=images(len(test_labels), test_size or size), y_test=test_labels, **extra)


def idx_folder(folder: Path, train_labels=None, test_labels=None, truncate=False) -> None:
    folder.mkdir()
    train_labels = np.arange(20) % 10 if train_labels is None else np.asarray(train_labels)
    test_labels = np.arange(10) if test_labels is None else np.asarray(test_labels)
    for split, labels in (("train", train_labels), ("t10k", test_labels)):
        write_idx(folder / f"{split}-images-idx3-ubyte", RNG.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8))
    if truncate:
        data = idx_bytes(RNG.integers(0, 256, (20, 28, 28), dtype=np.uint8))
        (folder / "train-images-idx3-ubyte").write_bytes(data[:-100])


def image_folder(root: Path, sizes=None, classes=("a", "b"), test_classes=None) -> None:
    """Two grey 28x28 images per class and split; ``sizes`` maps "split/class/i.png" to another size."""
    for split, names in (("train", classes), ("test", test_classes or classes)):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                size = (sizes or {}).get(f"{split}/{name}/{i}.png", (28, 28))
                Image.fromarray(RNG.integers(0, 256, size[::-1], dtype=np.uint8), "L").save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_inputs")
    ten, test = np.arange(120) % 10, np.arange(20) % 10
    npz(d / "base.npz", ten, test)
    npz(d / "label57.npz", ten, [*test[:-1], 57])
    npz(d / "one_class.npz", np.zeros(30, np.int64), np.zeros(5, np.int64))
    npz(d / "test_class_absent.npz", np.arange(90) % 9, test)
    npz(d / "named_class_empty.npz", np.array([c for c in ten if c != 3]), test,
        class_names=np.array([f"c{i}" for i in range(10)]))
    npz(d / "named_label_outside.npz", [*ten[:-1], 10], test, class_names=np.array([f"c{i}" for i in range(10)]))
    npz(d / "size_mismatch.npz", ten, test, test_size=32)
    npz(d / "empty_test.npz", ten, np.zeros(0, np.int64))
    npz(d / "empty_train.npz", np.zeros(0, np.int64), test)
    npz(d / "rgb.npz", ten, test, channels=3)
    npz(d / "tiny_images.npz", ten, test, size=8)
    npz(d / "float_labels.npz", ten.astype(np.float32), test)
    npz(d / "negative_label.npz", [*ten[:-1], -1], test)
    np.savez(d / "missing_y_test.npz", x_train=np.zeros((10, 28, 28), np.uint8), y_train=np.arange(10),
             x_test=np.zeros((10, 28, 28), np.uint8))
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip at all")

    idx_folder(d / "idx_train_label_200", train_labels=[*(np.arange(19) % 10), 200])
    idx_folder(d / "idx_test_label_12", test_labels=[*range(9), 12])
    idx_folder(d / "idx_truncated", truncate=True)
    idx_folder(d / "idx_class_9_empty", train_labels=np.arange(18) % 9)

    image_folder(d / "folder_ok")
    image_folder(d / "folder_empty_class")
    for png in (d / "folder_empty_class" / "train" / "b").iterdir():
        png.unlink()
    image_folder(d / "folder_truncated")
    png = d / "folder_truncated" / "test" / "b" / "1.png"
    png.write_bytes(png.read_bytes()[:200])
    image_folder(d / "folder_mixed_sizes", sizes={"train/b/1.png": (32, 32)})
    image_folder(d / "folder_train_test_classes_differ", test_classes=("a", "c"))
    image_folder(d / "folder_symlink")
    outside = d / "outside"
    outside.mkdir()
    Image.new("L", (28, 28), 9).save(outside / "secret.png")
    os.symlink(outside / "secret.png", d / "folder_symlink" / "train" / "a" / "link.png")
    image_folder(d / "folder_class_symlink")
    shutil.copytree(d / "folder_ok" / "train" / "a", outside / "class_a")
    shutil.rmtree(d / "folder_class_symlink" / "train" / "a")
    os.symlink(outside / "class_a", d / "folder_class_symlink" / "train" / "a")

    make_cifar10(d / "cifar_hostile" / "cifar-10-batches-py")
    write_pickle(d / "cifar_hostile" / "cifar-10-batches-py" / "data_batch_1",
                 {b"data": _Touch("system", d / "pwned-cifar"), b"labels": []})

    (d / "hostile.yaml").write_text(f'!!python/object/apply:os.system ["touch {d / "pwned-yaml"}"]\n')
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "cycle_a.yaml").write_text("_base_: [cycle_b.yaml]\n")
    (d / "cycle_b.yaml").write_text("_base_: [cycle_a.yaml]\n")
    (d / "base_missing.yaml").write_text("_base_: [nowhere_base.yaml]\n")
    (d / "base_not_list.yaml").write_text("_base_: base.yaml\n")
    write_base_config(d)
    assert cli.main(["train", str(d / "base.yaml"), f"output={d / 'finished'}"]) == 0
    return d


# ----------------------------------------------------------------------------- run-folder set-ups

def finished_run(out: Path, d: Path) -> None:
    shutil.copytree(d / "finished", out)


def hostile_checkpoint(out: Path, d: Path) -> None:
    with RunLock(out):  # a run's folder (anything else is refused before its checkpoint is read)
        pass
    torch.save({"fingerprint": _Touch("system", d / "pwned-checkpoint")}, out / "checkpoint.pt")


def garbage_checkpoint(out: Path, d: Path) -> None:
    with RunLock(out):
        pass
    (out / "checkpoint.pt").write_bytes(b"\x80\x02 truncated")


def file_in_the_way(out: Path, d: Path) -> None:
    out.write_text("not a folder\n")


@dataclass
class Case:
    id: str
    args: list[str]
    fragment: str
    config: str = "{d}/base.yaml"
    prepare: Callable[[Path, Path], None] | None = None
    holds_lock: bool = False  # another writer holds the run folder during the command


def bad(id: str, *args: str, fragment: str, **kw) -> Case:
    return Case(id, list(args), fragment, **kw)


CRT, CSA, LA, RESAMPLE = "method.name=crt", "method.name=csa", "method.name=la", "method.name=resample"
COLOUR = "data.context.enabled=true"
CAM_BS = "method.name=cam-bs"

CASES = [
    # --- the issue's cases --------------------------------------------------------------
    bad("issue-lr-nan", "train.optim.lr=.nan", fragment="train.optim.lr must be a finite number, got nan"),
    bad("issue-lr-inf", "train.optim.lr=.inf", fragment="train.optim.lr must be a finite number, got inf"),
    bad("issue-lr-nan-string", "train.optim.lr=nan", fragment="train.optim.lr must be a finite number, got nan"),
    bad("issue-rho-inf", "data.longtail.rho=.inf", fragment="data.longtail.rho must be a finite number, got inf"),
    bad("issue-std-nan", "data.mean=[0.5]", "data.std=[.nan]", fragment="data.std[0] must be a finite number, got nan"),
    bad("issue-gamma-negative", "train.optim.gamma=-0.1", fragment="train.optim.gamma must be > 0, got -0.1"),
    bad("issue-retrain-epochs-abc", CRT, "method.params.retrain_epochs=abc",
        fragment="method.params.retrain_epochs must be an integer, got 'abc'"),
    bad("issue-retrain-epochs-0", CRT, "method.params.retrain_epochs=0",
        fragment="method.params.retrain_epochs must be >= 1, got 0"),
    bad("issue-retrain-epochs-minus-2", CRT, "method.params.retrain_epochs=-2",
        fragment="method.params.retrain_epochs must be >= 1, got -2"),
    bad("issue-q-abc", RESAMPLE, "method.params.q=abc", fragment="method.params.q must be a number, got 'abc'"),
    bad("issue-la-tau-abc", LA, "method.params.loss_params.tau=abc",
        fragment="method.params.loss_params.tau must be a number, got 'abc'"),
    bad("issue-delta-high", CSA, "method.params.delta=high", fragment="method.params.delta must be a number, got 'high'"),
    bad("issue-head-classes-above-count", COLOUR, "data.context.head_classes=11",
        fragment="data.context.head_classes must be in [0, 10] (the dataset's class count), got 11"),
    bad("issue-padding-negative", "data.padding=-1", fragment="data.padding must be >= 0, got -1"),
    bad("issue-momentum-negative", "train.optim.momentum=-0.9", fragment="train.optim.momentum must be >= 0, got -0.9"),
    bad("issue-weight-decay-negative", "train.optim.weight_decay=-0.0001",
        fragment="train.optim.weight_decay must be >= 0, got -0.0001"),
    bad("issue-threads-0", "threads=0", fragment="threads must be >= 1, got 0"),
    bad("issue-threads-negative", "threads=-2", fragment="threads must be >= 1, got -2"),
    bad("issue-seed-negative", "seed=-1", fragment="seed must be in [0, 4294967295], got -1"),
    bad("issue-data-seed-negative", "data.longtail.seed=-3", fragment="data.longtail.seed must be in [0, 4294967295], got -3"),
    bad("issue-mean-std-not-per-channel", "data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]",
        fragment="data.mean must have one value per channel (1 for these images), got [0.5, 0.5, 0.5]"),
    bad("issue-mean-std-lengths-differ", "data.mean=[0.5]", "data.std=[0.2,0.2]",
        fragment="data.mean and data.std must have one value per channel each, got 1 and 2 values"),
    bad("issue-idx-train-label-200", "data.dataset=mnist", "data.root={d}/idx_train_label_200",
        fragment="idx_train_label_200: 1 training labels outside [0, 10) (the 10 named classes), e.g. 200"),
    bad("issue-idx-test-label-12", "data.dataset=mnist", "data.root={d}/idx_test_label_12",
        fragment="idx_test_label_12: 1 test labels outside [0, 10) (the 10 named classes), e.g. 12"),
    bad("issue-npz-test-label-57", "data.root={d}/label57.npz",
        fragment="label57.npz: 1 test labels outside [0, 10) (the classes of the training split), e.g. 57"),
    bad("issue-single-class", "data.root={d}/one_class.npz",
        fragment="one_class.npz: 1 class; a classifier needs at least two"),
    bad("issue-empty-class-folder", "data.dataset=folder", "data.root={d}/folder_empty_class",
        fragment="class folder {d}/folder_empty_class/train/b holds no .png/.jpg/.jpeg/.bmp image (0 files)"),
    bad("issue-truncated-png", "data.dataset=folder", "data.root={d}/folder_truncated",
        fragment="cannot decode image {d}/folder_truncated/test/b/1.png"),
    bad("issue-train-test-sizes-differ", "data.root={d}/size_mismatch.npz",
        fragment="size_mismatch.npz: test images are 1x32x32 (CxHxW) but training images are 1x28x28"),
    bad("issue-empty-npz-split", "data.root={d}/empty_test.npz",
        fragment="empty_test.npz: the test split is empty (0 images)"),
    bad("issue-symlink-outside-root", "data.dataset=folder", "data.root={d}/folder_symlink",
        fragment="link.png resolves to {d}/outside/secret.png, outside the data root {d}/folder_symlink; "
                 "set data.allow_outside_root=true"),
    bad("issue-hostile-checkpoint", fragment="Trying to load unsupported GLOBAL posix.system",
        prepare=hostile_checkpoint),
    bad("issue-refused-config-names-the-key", "train.optim.lr=0.05",
        fragment="was written by another config (checkpoint -> now: train.optim.lr: 0.1 -> 0.05)",
        prepare=finished_run),
    bad("issue-rho-empties-classes", "data.longtail.rho=1e9",
        fragment="data.longtail (profile exp, rho 1000000000.0, n_max 12) leaves 8 of 10 classes without a training image"),
    bad("issue-test-class-absent-from-training", "data.root={d}/test_class_absent.npz",
        fragment="test_class_absent.npz: 2 test labels outside [0, 9) (the classes of the training split), e.g. 9"),
    bad("issue-run-folder-busy", fragment="is in use by another tailshift process (pid {pid})", holds_lock=True,
        prepare=finished_run),
    # --- every other number has a range ----------------------------------------------------
    bad("epochs-0", "train.epochs=0", fragment="train.epochs must be >= 1, got 0"),
    bad("epochs-fraction", "train.epochs=1.5", fragment="train.epochs must be an integer, got 1.5"),
    bad("epochs-word", "train.epochs=two", fragment="train.epochs must be an integer, got 'two'"),
    bad("batch-size-0", "train.batch_size=0", fragment="train.batch_size must be >= 1, got 0"),
    bad("test-batch-size-0", "train.test_batch_size=0", fragment="train.test_batch_size must be >= 1, got 0"),
    bad("eval-every-negative", "train.eval_every=-1", fragment="train.eval_every must be >= 0 (0: the last epoch only), got -1"),
    bad("checkpoint-not-bool", "train.checkpoint=sometimes", fragment="train.checkpoint must be true or false, got 'sometimes'"),
    bad("lr-0", "train.optim.lr=0", fragment="train.optim.lr must be > 0, got 0.0"),
    bad("lr-negative", "train.optim.lr=-0.1", fragment="train.optim.lr must be > 0, got -0.1"),
    bad("lr-word", "train.optim.lr=fast", fragment="train.optim.lr must be a number, got 'fast'"),
    bad("schedule-unknown", "train.optim.schedule=linear",
        fragment="train.optim.schedule must be one of bbn_multistep, constant, cosine, cosine_epoch, step; got 'linear'"),
    bad("cosine-period-0", "train.optim.cosine_period=0",
        fragment="train.optim.cosine_period must be >= 1 (or null: train.epochs), got 0"),
    bad("warmup-reaches-epochs", "train.optim.warmup_epochs=1", fragment="train.optim.warmup_epochs must be in [0, epochs), got 1"),
    bad("warmup-negative", "train.optim.warmup_epochs=-1", fragment="train.optim.warmup_epochs must be >= 0, got -1"),
    bad("milestone-negative", "train.optim.milestones=[-1, 5]", fragment="train.optim.milestones must hold numbers >= 0, got [-1, 5]"),
    bad("milestones-not-list", "train.optim.milestones=5", fragment="train.optim.milestones must be a list, got 5"),
    bad("clip-negative", "train.optim.clip_grad_norm=-1", fragment="train.optim.clip_grad_norm must be >= 0 (0: off), got -1.0"),
    bad("clip-inf", "train.optim.clip_grad_norm=.inf", fragment="train.optim.clip_grad_norm must be a finite number, got inf"),
    bad("gamma-nan", "train.optim.gamma=.nan", fragment="train.optim.gamma must be a finite number, got nan"),
    bad("nesterov-without-momentum", "train.optim.nesterov=true",
        fragment="train.optim.nesterov=true needs train.optim.momentum > 0, got 0.0"),
    bad("nesterov-not-bool", "train.optim.nesterov=maybe", fragment="train.optim.nesterov must be true or false, got 'maybe'"),
    bad("rho-below-1", "data.longtail.rho=0.5", fragment="data.longtail.rho must be >= 1, got 0.5"),
    bad("n-max-0", "data.longtail.n_max=0", fragment="data.longtail.n_max must be >= 1, got 0"),
    bad("n-max-tiny-empties-classes", "data.longtail.n_max=1",
        fragment="data.longtail (profile exp, rho 10.0, n_max 1) leaves 9 of 10 classes without a training image"),
    bad("step-fraction-1.5", "data.longtail.step_fraction=1.5", fragment="data.longtail.step_fraction must be in (0, 1), got 1.5"),
    bad("step-fraction-0", "data.longtail.step_fraction=0", fragment="data.longtail.step_fraction must be in (0, 1), got 0.0"),
    bad("profile-unknown", "data.longtail.profile=log", fragment="data.longtail.profile must be one of exp, step, none; got 'log'"),
    bad("seed-too-large", "seed=4294967296", fragment="seed must be in [0, 4294967295], got 4294967296"),
    bad("seed-fraction", "seed=1.5", fragment="seed must be an integer, got 1.5"),
    bad("noise-1", COLOUR, "data.context.noise=1.0", fragment="data.context.noise must be in [0, 1), got 1.0"),
    bad("noise-negative", COLOUR, "data.context.noise=-0.1", fragment="data.context.noise must be in [0, 1), got -0.1"),
    bad("head-classes-negative", COLOUR, "data.context.head_classes=-1", fragment="data.context.head_classes must be >= 0, got -1"),
    bad("palette-unknown", "data.context.palette=viridis", fragment="data.context.palette must be one of tab10, deep; got 'viridis'"),
    bad("groups-unknown", "data.groups=quartile", fragment="data.groups must be one of index, count; got 'quartile'"),
    bad("group-bounds-reversed", "data.group_bounds=[5, 2]", fragment="data.group_bounds must be [b1, b2] with b1 <= b2, got [5, 2]"),
    bad("group-bounds-three", "data.group_bounds=[1, 2, 3]", fragment="data.group_bounds must be [b1, b2] with b1 <= b2, got [1, 2, 3]"),
    bad("group-bounds-negative", "data.group_bounds=[-1, 5]", fragment="data.group_bounds must hold numbers >= 0, got [-1, 5]"),
    bad("group-bounds-beyond-classes", "data.groups=index", "data.group_bounds=[4, 11]",
        fragment="data.group_bounds must satisfy 0 <= b1 <= b2 <= 10 (the class count), got [4, 11]"),
    bad("augment-unknown", "data.augment=rotate",
        fragment="data.augment must be one of none, crop_flip, resized_crop; got 'rotate'"),
    bad("mean-without-std", "data.mean=[0.5]", fragment="data.mean and data.std must be given together"),
    bad("std-zero", "data.mean=[0.5]", "data.std=[0]", fragment="data.std must hold numbers > 0, got [0.0]"),
    bad("per-class-0", "sampling.per_class=0", fragment="sampling.per_class must be >= 1, got 0"),
    bad("balanced-unknown", "sampling.balanced=random", fragment="sampling.balanced must be one of class_aware, power; got 'random'"),
    bad("balanced-epoch-unknown", "sampling.balanced_epoch=forever",
        fragment="sampling.balanced_epoch must be one of balanced, dataset; got 'forever'"),
    bad("device-unknown", "device=tpu", fragment="device must be auto, cpu or cuda[:N], got 'tpu'"),
    bad("device-indexed-for-processes", "device=cuda:1", "--nproc", "2",
        fragment="device=cuda:1 names one GPU for all 2 processes of this machine; use device=cuda or device=auto"),
    bad("output-empty", "output=", fragment="output must name a folder for the run, got ''"),
    bad("output-is-a-file", fragment="output {out} is a file, not a folder", prepare=file_in_the_way),
    bad("unknown-top-key", "colour=1", fragment="unknown key colour; known: data, model, method"),
    bad("unknown-nested-key", "train.optim.lr_decay=0.1", fragment="unknown key train.optim.lr_decay; known: name, lr, momentum"),
    bad("section-not-mapping", "train=5", fragment="train must be a mapping, got 5"),
    bad("progress-not-bool", "progress=maybe", fragment="progress must be true or false, got 'maybe'"),
    bad("override-bad-yaml", "train.epochs=[1", fragment="override 'train.epochs=[1': value is not valid YAML"),
    bad("per-rho-key-not-a-ratio", "per_rho={{fifty: {{seed: 1}}}}",
        fragment="per_rho: key 'fifty' is not an imbalance ratio (a number >= 1)"),
    bad("per-rho-sets-rho", "per_rho={{50: {{data: {{longtail: {{rho: 10}}}}}}}}",
        fragment="per_rho.50 may not set data.longtail.rho (it is chosen by it)"),
    # --- names and method params -----------------------------------------------------------
    bad("dataset-unknown", "data.dataset=imagenet", fragment="unknown dataset 'imagenet'; known: cifar10"),
    bad("model-unknown", "model.name=vit", fragment="unknown model 'vit'; known: lenet2d"),
    bad("tune-unknown", "model.tune=prefix", fragment="model.tune must be one of full, linear, bitfit, vpt_shallow, "
                                                    "vpt_deep, lora, adapter, adaptformer, ssf; got 'prefix'"),
    bad("tune-not-for-the-model", "model.tune=vpt_deep",
        fragment="model.tune=vpt_deep needs vision transformer blocks of timm's or open_clip's form; "
                 "model.name=lenet2d has none"),
    bad("pretrained-hub-not-for-the-model", "model.pretrained=hub",
        fragment="model.pretrained=hub needs a model whose library downloads weights (timm:NAME, clip:NAME)"),
    bad("tune-dim-zero", "model.tune_dim=0", fragment="model.tune_dim must be >= 1"),
    bad("method-unknown", "method.name=magic", fragment="unknown method 'magic'; known: bbn, bcl, cam-bs, cbrs, ce, cmo, crt"),
    bad("param-unknown", "method.params.volume=3", fragment="unknown method.params.volume for CrossEntropy; known: loss, loss_params, classifier"),
    bad("params-not-mapping", "method.params=5", fragment="method.params must be a mapping, got 5"),
    bad("m2m-beta-1", "method.name=m2m", "method.params.beta=1", fragment="method.params.beta must be in (0, 1), got 1"),
    bad("m2m-attack-iter-0", "method.name=m2m", "method.params.attack_iter=0",
        fragment="method.params.attack_iter must be >= 1, got 0"),
    bad("sampler-unknown", "method.params.sampler=sideways",
        fragment="method.params.sampler must be one of uniform, balanced, power, reversed; got 'sideways'"),
    bad("loss-unknown", "method.params.loss=magic",
        fragment="method.params.loss must be one of balanced-softmax, ce, class-balanced, drw, focal, la, ldam; got 'magic'"),
    bad("loss-param-unknown", "method.params.loss=focal", "method.params.loss_params.alpha=1",
        fragment="unknown method.params.loss_params.alpha for Focal; known: gamma, activation"),
    bad("loss-param-bad", "method.params.loss=focal", "method.params.loss_params.gamma=-1",
        fragment="method.params.loss_params.gamma must be >= 0, got -1.0"),
    bad("optimizer-unknown", "train.optim.name=lamb", fragment="train.optim.name must be one of adamw, sgd; got 'lamb'"),
    bad("betas-out-of-range", "train.optim.betas=[0.9, 1.0]", fragment="train.optim.betas must hold numbers in [0, 1), got [0.9, 1.0]"),
    bad("betas-not-a-pair", "train.optim.betas=[0.9]", fragment="train.optim.betas must hold 2 numbers (AdamW's beta1, beta2), got [0.9]"),
    bad("compile-unknown", "train.compile=max-autotune",
        fragment="train.compile must be one of auto, off, default, reduce-overhead; got 'max-autotune'"),
    bad("compile-true", "train.compile=true",
        fragment="train.compile must be one of auto, off, default, reduce-overhead; got 'on'"),
    bad("amp-unknown", "train.amp=fp8", fragment="train.amp must be one of auto, off, bf16, fp16; got 'fp8'"),
    bad("channels-last-unknown", "train.channels_last=sometimes",
        fragment="train.channels_last must be one of auto, on, off; got 'sometimes'"),
    bad("fused-optimizer-number", "train.fused_optimizer=1", fragment="train.fused_optimizer must be a string, got 1"),
    bad("joint-forward-not-bool", CSA, "method.params.joint_forward=maybe",
        fragment="method.params.joint_forward must be true or false, got 'maybe'"),
    bad("q-above-1", RESAMPLE, "method.params.q=1.5", fragment="method.params.q must be in [0, 1], got 1.5"),
    bad("q-nan", RESAMPLE, "method.params.q=.nan", fragment="method.params.q must be a finite number, got nan"),
    bad("tau-negative", LA, "method.params.loss_params.tau=-1",
        fragment="method.params.loss_params.tau must be >= 0, got -1.0"),
    bad("retrain-lr-0", CRT, "method.params.retrain_lr=0", fragment="method.params.retrain_lr must be > 0, got 0.0"),
    bad("retrain-schedule-step", CRT, "method.params.retrain_schedule=step",
        fragment="method.params.retrain_schedule must be one of constant, cosine, cosine_epoch; got 'step'"),
    bad("reinit-not-bool", CRT, "method.params.reinit=maybe", fragment="method.params.reinit must be true or false, got 'maybe'"),
    bad("bcl-crop-scale-0", "method.name=bcl", "method.params.contrastive_params={{crop_scale: 0}}",
        fragment="method.params.contrastive_params.crop_scale must be in (0, 1], got 0.0"),
    bad("retrain-bn-unknown", CRT, "method.params.retrain_bn=frozen",
        fragment="method.params.retrain_bn must be one of eval, train; got 'frozen'"),
    bad("delta-above-1", CSA, "method.params.delta=1.5", fragment="method.params.delta must be in [0, 1], got 1.5"),
    bad("balanced-q-above-1", CSA, "method.params.balanced_stream=power", "method.params.balanced_q=2",
        fragment="method.params.balanced_q must be in [0, 1] (the power stream's exponent), got 2.0"),
    bad("bank-multiple-0", CSA, "method.params.bank_multiple=0", fragment="method.params.bank_multiple must be >= 1, got 0"),
    bad("mask-power-0", CSA, "method.params.mask_power=0", fragment="method.params.mask_power must be > 0, got 0.0"),
    bad("csa-warmup-negative", CSA, "method.params.warmup_epochs=-1", fragment="method.params.warmup_epochs must be >= 0, got -1"),
    bad("cam-unknown", CSA, "method.params.cam=scorecam", fragment="method.params.cam must be one of gradcam, cam; got 'scorecam'"),
    bad("lam-reversed", CSA, "method.params.lam_a=0.6", "method.params.lam_b=0.2",
        fragment="method.params.lam_a/lam_b must be 0 <= lam_a <= lam_b <= 1 for a uniform lambda, got (0.6, 0.2)"),
    bad("uniform-weight-negative", CSA, "method.params.uniform_weight=-1",
        fragment="method.params.uniform_weight must be >= 0, got -1.0"),
    bad("mixup-alpha-negative", CSA, "method.params.mixup_alpha=-0.5", fragment="method.params.mixup_alpha must be >= 0 (0: off), got -0.5"),
    bad("cam-needs-pooled-backbone", CSA, "method.params.cam=cam",
        fragment="method.params.cam=cam needs a backbone whose embed is global average pooling; LeNet2d is not"),
    bad("cam-bs-second-epochs-0", CAM_BS, "method.params.second_epochs=0",
        fragment="method.params.second_epochs must be >= 1, got 0"),
    bad("cam-bs-schedule-unknown", CAM_BS, "method.params.second_schedule=linear",
        fragment="method.params.second_schedule must be one of bbn_multistep, constant, cosine, cosine_epoch, step; got 'linear'"),
    bad("cam-bs-milestone-negative", CAM_BS, "method.params.second_milestones=[-1]",
        fragment="method.params.second_milestones must hold numbers >= 0, got [-1]"),
    bad("cam-bs-needs-pooled-backbone", CAM_BS,
        fragment="method cam-bs needs a backbone whose embed is global average pooling (CAM, network.py line 205); LeNet2d is not"),
    # --- files that cannot be what they claim ----------------------------------------------
    bad("config-missing", fragment="no config '{d}/nowhere.yaml': not a YAML file", config="{d}/nowhere.yaml"),
    bad("config-hostile-yaml", fragment="hostile.yaml: the tag 'tag:yaml.org,2002:python/object/apply:os.system' "
        "at line 1, column 1 is not allowed", config="{d}/hostile.yaml"),
    bad("config-not-mapping", fragment="list.yaml must hold a mapping at the top level", config="{d}/list.yaml"),
    bad("config-base-cycle", fragment="cycle_a.yaml: its _base_ files include themselves "
        "(cycle_a.yaml -> cycle_b.yaml -> cycle_a.yaml)", config="{d}/cycle_a.yaml"),
    bad("config-base-missing", fragment="base_missing.yaml: _base_ file 'nowhere_base.yaml' does not exist",
        config="{d}/base_missing.yaml"),
    bad("config-base-not-list", fragment="base_not_list.yaml: _base_ must be a list of YAML file paths relative to "
        "it, got 'base.yaml'", config="{d}/base_not_list.yaml"),
    bad("config-base-by-name", fragment="no config '_base_/recipes/csa-release': not a YAML file, and not a shipped "
        "config", config="_base_/recipes/csa-release"),
    bad("hostile-cifar-pickle", "data.dataset=cifar10", "data.root={d}/cifar_hostile",
        fragment="refusing to unpickle posix.system from {d}/cifar_hostile/cifar-10-batches-py/data_batch_1"),
    bad("garbage-checkpoint", fragment="cannot read checkpoint {out}/checkpoint.pt (", prepare=garbage_checkpoint),
    bad("refused-config-other-method", "method.name=cbrs", fragment="method.name: 'ce' -> 'cbrs'", prepare=finished_run),
    bad("refused-config-other-seed", "seed=1", fragment="(checkpoint -> now: seed: 0 -> 1)", prepare=finished_run),
    bad("npz-corrupt", "data.root={d}/corrupt.npz", fragment="cannot read {d}/corrupt.npz: BadZipFile"),
    bad("npz-missing", "data.root={d}/nowhere.npz", fragment="cannot read {d}/nowhere.npz: FileNotFoundError"),
    bad("npz-missing-array", "data.root={d}/missing_y_test.npz", fragment="missing_y_test.npz: missing arrays y_test"),
    bad("npz-float-labels", "data.root={d}/float_labels.npz", fragment="float_labels.npz: y_train must hold integers, got float32"),
    bad("npz-negative-label", "data.root={d}/negative_label.npz", fragment="train split: labels must be >= 0, found -1"),
    bad("npz-empty-train", "data.root={d}/empty_train.npz", fragment="empty_train.npz: the training split is empty (0 images)"),
    bad("npz-named-class-empty", "data.root={d}/named_class_empty.npz",
        fragment="named_class_empty.npz: 1 of 10 classes have no training image, 1 of them in the test split: 3 ('c3')"),
    bad("npz-label-beyond-names", "data.root={d}/named_label_outside.npz",
        fragment="named_label_outside.npz: 1 training labels outside [0, 10) (the 10 named classes), e.g. 10"),
    bad("colour-needs-grey", COLOUR, "data.root={d}/rgb.npz", fragment="coloured context needs grey images (N, 1, H, W)"),
    bad("model-cannot-take-images", "data.root={d}/tiny_images.npz",
        fragment="model.name=lenet2d cannot take the dataset's 1x8x8 (CxHxW) images"),
    bad("idx-truncated", "data.dataset=mnist", "data.root={d}/idx_truncated",
        fragment="idx_truncated/train-images-idx3-ubyte: truncated"),
    bad("idx-class-empty", "data.dataset=mnist", "data.root={d}/idx_class_9_empty",
        fragment="idx_class_9_empty: 1 of 10 classes have no training image, 1 of them in the test split: 9 ('9')"),
    bad("idx-folder-missing", "data.dataset=mnist", "data.root={d}/no_such_folder", fragment="no train-images-idx3-ubyte[.gz]"),
    bad("folder-mixed-sizes", "data.dataset=folder", "data.root={d}/folder_mixed_sizes",
        fragment="train/b/1.png is 32x32 but {d}/folder_mixed_sizes/train/a/0.png is 28x28 (1 of 8 images differ in size)"),
    bad("folder-classes-differ", "data.dataset=folder", "data.root={d}/folder_train_test_classes_differ",
        fragment="classes ['a', 'c'] differ from"),
    bad("folder-class-symlink-outside", "data.dataset=folder", "data.root={d}/folder_class_symlink",
        fragment="folder_class_symlink/train/a resolves to {d}/outside/class_a, outside the data root"),
    bad("folder-without-splits", "data.dataset=folder", "data.root={d}/outside",
        fragment="{d}/outside needs train/ and test/ (or val/) folders"),
    bad("folder-index-groups-two-classes", "data.dataset=folder", "data.root={d}/folder_ok", "data.groups=index",
        fragment="no default index bounds for 2 classes"),
]


def write_base_config(d: Path) -> None:
    """``d``/base.yaml: a 1-epoch LeNet run on ``d``/base.npz, one thread, no progress bars."""
    (d / "base.yaml").write_text(
        f"data: {{dataset: npz, root: {d / 'base.npz'}, groups: count,\n"
        "       longtail: {profile: exp, rho: 10, n_max: 12}}\n"
        "model: {name: lenet2d}\nmethod: {name: ce}\n"
        "train: {epochs: 1, batch_size: 32, test_batch_size: 100, eval_every: 0}\n"
        "threads: 1\nprogress: false\n")


def snapshot(path: Path):
    """Everything under ``path``: None if absent, bytes for a file, else each entry's bytes (None: a folder).

    The lock file's content (the last writer's pid) is left out; that it exists is not."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): None if p.is_dir() or p.name == LOCK_NAME else p.read_bytes()
            for p in sorted(path.rglob("*"))}


def test_the_table_covers_at_least_80_inputs_and_the_issues_cases():
    assert len(CASES) >= 80 and sum(c.id.startswith("issue-") for c in CASES) >= 32
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # LeNet built for 8x8 images, then refused
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_before_any_work(case, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    if case.prepare:
        case.prepare(out, data)
    monkeypatch.setattr(Trainer, "_fit", lambda *a: pytest.fail("training started"))
    subs = {"d": data, "out": out, "pid": os.getpid()}
    args = ["train", case.config.format(**subs), f"output={out}", *(a.format(**subs) for a in case.args)]
    with RunLock(out) if case.holds_lock else contextlib.nullcontext():
        before = snapshot(out)
        code = cli.main(args)
        after = snapshot(out)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tailshift: error: ") and err.count("\n") == 1, err
    assert case.fragment.format(**subs) in err
    assert after == before  # nothing new, nothing changed
    assert not list(data.glob("pwned*"))  # no hostile file ran
