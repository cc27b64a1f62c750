"""Tiny generated data shared by the tests."""
from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np
import pytest
import torch

from tailshift.data.arrays import ArrayDataset
from tailshift.data.build import PreparedData
from tailshift.data.groups import class_groups


def tiny_prepared(channels: int = 1, size: int = 28, counts=(60, 40, 25, 15, 10, 8, 6, 5, 4, 3), seed: int = 0) -> PreparedData:
    """A long-tailed 10-class set whose classes are separable (class-dependent bright square)."""
    rng = np.random.default_rng(seed)

    def make(per_class):
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)]).astype(np.int64)
        images = rng.integers(0, 60, size=(len(labels), channels, size, size), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 4)
            images[i, :, 2 + 6 * r: 6 + 6 * r, 2 + 6 * col: 6 + 6 * col] = 250
        return ArrayDataset(images, labels)

    train = make(counts)
    test = make([20] * len(counts))
    return PreparedData(train, test, len(counts), class_groups(np.array(counts), "index"))


def fit_until_interrupted(trainer, when) -> None:
    """``trainer.fit()`` with Ctrl-C (KeyboardInterrupt) striking as the first epoch for which
    ``when(stage_name, epoch, started)`` holds begins (epoch 0-based within its stage; started: epochs
    begun so far, this one included), as a killed run stops; the checkpoint is the last whole epoch's."""
    original, started = trainer._train_epoch, [0]

    def train_epoch(stage, stage_index, epoch, *rest):
        started[0] += 1
        if when(stage.name, epoch, started[0]):
            raise KeyboardInterrupt
        return original(stage, stage_index, epoch, *rest)

    trainer._train_epoch = train_epoch
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


@pytest.fixture
def prepared():
    return tiny_prepared()


def write_imagenet_lt(root, counts=(40, 25, 15, 10, 6, 4), test_per_class=4, seed=0, sizes=((40, 48), (52, 36))):
    """A tiny ImageNet-LT on disk: JPEGs at train/<wnid>/<wnid>_<i>.JPEG and val/<wnid>/ILSVRC2012_val_*.JPEG
    (each class a colour block at its own place, on noise; two image sizes), with ImageNet_LT_train.txt
    and ImageNet_LT_test.txt ("path label" lines) in ``root``. Returns ``root``."""
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    lines = {"train": [], "test": []}
    k = 0
    for c, n in enumerate(counts):
        wnid = f"n{c:08d}"
        for split, folder, number in (("train", "train", n), ("test", "val", test_per_class)):
            (root / folder / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(number):
                w, h = sizes[(i + c) % len(sizes)]
                pixels = rng.integers(0, 90, size=(h, w, 3), dtype=np.uint8)
                y, x = 4 + 5 * (c % 4), 4 + 7 * (c // 4)
                pixels[y: y + 12, x: x + 14] = (200, 60 + 30 * c, 250 - 30 * c)
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{k:08d}.JPEG"
                k += 1
                Image.fromarray(pixels).save(root / folder / wnid / name, quality=90)
                lines[split].append(f"{folder}/{wnid}/{name} {c}")
    (root / "ImageNet_LT_train.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "ImageNet_LT_test.txt").write_text("\n".join(lines["test"]) + "\n")
    return root


def write_cifar100(tmp_path, per_class):
    """A tiny CIFAR-100 pickle folder (train ``per_class`` images a class, test one)."""
    import pickle

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", per_class), ("test", 1)):
        labels = np.repeat(np.arange(100), n)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"fine_labels": labels.tolist(),
                                                  b"coarse_labels": [0] * len(labels)}, protocol=2))
    names = [f"class{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}))


_NMS_SCHEMAS = torch.library.Library("torchvision", "FRAGMENT")  # kept alive: dropping it removes the schemas


def import_real(module: str):
    """The installed ``module`` (torchvision, or timm / open_clip, which import it), or a skip when it is not
    installed. PyPI's torchvision build (made against the CUDA torch) does import beside the CPU torch this
    project tests with, all but its compiled detection ops: its import registers fake kernels for
    ``torchvision::nms`` and ``qnms``, ops only that library defines. Declaring their schemas lets the
    pure-Python model code import; classification models never call them, so models run their own code
    unchanged. A torchvision whose ops load is used as it is."""
    for name in dict.fromkeys(("torchvision", module)):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # the failed import's half-built submodules
        for op in ("nms", "qnms"):
            _NMS_SCHEMAS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return importlib.import_module(module)


@pytest.fixture
def real_torchvision():
    """The installed torchvision (``import_real``)."""
    return import_real("torchvision")
