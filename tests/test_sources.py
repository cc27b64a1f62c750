import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tailshift.data.arrays import DataError
from tailshift.data.sources import (
    CIFAR10_CLASSES,
    DATASETS,
    FASHION_MNIST_SYSTEM_DIR,
    load_cifar,
    load_dataset,
    load_image_folder,
    load_mnist_format,
    load_npz,
    read_idx,
    verify_sha256,
)
from tailshift.data.transforms import to_8bit
from tailshift.registry import UnknownNameError

RNG = np.random.default_rng(0)


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    got = read_idx(write_idx(tmp_path / f"x-idx3-ubyte{suffix}", images))
    assert got.dtype == np.uint8 and got.flags.writeable
    np.testing.assert_array_equal(got, images)


def test_idx_truncated_and_bad_magic(tmp_path):
    data = idx_bytes(np.zeros((5, 4, 4), np.uint8))
    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(data[:-3])
    with pytest.raises(DataError, match="short-idx3-ubyte.*truncated"):
        read_idx(truncated)
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DataError, match="bad-idx3-ubyte.*bad magic"):
        read_idx(bad)
    floats = tmp_path / "float-idx1-ubyte"
    floats.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0D, 1, 1) + b"\0" * 4)
    with pytest.raises(DataError, match="float-idx1-ubyte.*unsupported"):
        read_idx(floats)


def make_mnist(root: Path, n_train=10, n_test=3, dotted=False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        sep = "." if dotted else "-"
        write_idx(root / f"{split}-images{sep}idx3-ubyte", RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)


def test_load_mnist_format(tmp_path):
    make_mnist(tmp_path, dotted=True)
    data = load_mnist_format(tmp_path)
    assert data.train.images.shape == (10, 1, 28, 28) and data.test.images.shape == (3, 1, 28, 28)
    assert data.train.labels.dtype == np.int64 and list(data.test.labels) == [0, 1, 2]
    assert (data.source, data.caveat) == (str(tmp_path), "")


def test_load_mnist_format_missing_file(tmp_path):
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte.*{tmp_path}"):
        load_mnist_format(tmp_path)


def test_mnist_registry_accepts_parent_folder(tmp_path):
    make_mnist(tmp_path / "mnist")
    data = load_dataset("mnist", str(tmp_path))
    assert data.train.class_names == tuple("0123456789")


def write_pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10(folder: Path, rows=3) -> None:
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = np.full((rows, 3072), i, np.uint8)
        labels = [(i * rows + j) % 10 for j in range(rows)]  # 5 x 3 training images: every class
        write_pickle(folder / name, {b"data": data, b"labels": labels, b"batch_label": b"x"})
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES]})


def test_cifar10_pickles(tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        data = load_cifar(root, 10)
        assert data.train.images.shape == (15, 3, 32, 32) and data.test.images.shape == (3, 3, 32, 32)
        assert list(data.train.labels) == [k % 10 for k in range(15)]
        assert (data.test.images == 5).all() and list(data.test.labels) == [5, 6, 7]
        assert data.train.class_names == CIFAR10_CLASSES
        assert data.source == str(tmp_path / "cifar-10-batches-py") and data.caveat == ""
    assert load_dataset("cifar10", str(tmp_path)).train.images.shape == (15, 3, 32, 32)


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = RNG.integers(0, 256, (100, 3072), dtype=np.uint8)
    write_pickle(folder / "train", {b"data": data, b"fine_labels": list(range(100)), b"coarse_labels": [0] * 100})
    write_pickle(folder / "test", {b"data": data[:4], b"fine_labels": [0, 99, 5, 7], b"coarse_labels": [0] * 4})
    names = [f"class{i}".encode() for i in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20})
    got = load_dataset("cifar100", str(tmp_path))
    assert got.train.images.shape == (100, 3, 32, 32) and list(got.test.labels) == [0, 99, 5, 7]
    np.testing.assert_array_equal(got.train.images[1], data[1].reshape(3, 32, 32))
    assert got.train.num_classes == 100 and got.train.class_names[99] == "class99"


class _Touch:
    def __init__(self, call, marker: Path):
        self.call, self.marker = call, marker

    def __reduce__(self):
        if self.call == "system":
            return os.system, (f"touch {self.marker}",)
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("call", ["system", "open"])
def test_malicious_pickle_refused(tmp_path, call):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    write_pickle(batch, {b"data": _Touch(call, marker), b"labels": []})
    with pytest.raises(DataError, match="refusing to unpickle .* from .*data_batch_1"):
        load_cifar(tmp_path, 10)
    assert not marker.exists()


def save_npz(path: Path, n_train=6, n_test=4, classes=3, **skip) -> None:
    arrays = {
        "x_train": RNG.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": RNG.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }
    np.savez(path, **{k: v for k, v in arrays.items() if k not in skip})


def test_npz_round_trip(tmp_path):
    path = tmp_path / "small.npz"
    save_npz(path)
    with np.load(path) as f:
        x_train = f["x_train"]
    data = load_dataset("npz", str(path))
    assert data.train.images.shape == (6, 3, 32, 32) and data.test.images.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(data.train.images, x_train.transpose(0, 3, 1, 2))
    assert data.train.labels.dtype == np.int64 and list(data.test.labels) == [0, 1, 2, 0]
    assert (data.source, data.caveat) == (str(path), "")


def test_npz_known_to_differ_from_the_official_data_carries_its_caveat(tmp_path):
    path = tmp_path / "cifar10-jpeg.npz"
    save_npz(path, n_train=10, classes=10)
    data = load_dataset("cifar10", str(path))
    assert data.source == str(path) and "JPEG-decoded copy of CIFAR-10" in data.caveat
    assert "indicative only" in data.caveat


def test_npz_missing_key_and_corrupt(tmp_path):
    missing = tmp_path / "missing.npz"
    save_npz(missing, y_test=True)
    with pytest.raises(DataError, match="missing.npz.*y_test"):
        load_npz(missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="corrupt.npz"):
        load_npz(corrupt)


def test_verify_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    verify_sha256(path, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    with pytest.raises(DataError, match="f.bin.*does not match"):
        verify_sha256(path, "0" * 64)


def make_folder(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    for split in ("train", "val"):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                size = sizes.get(f"{split}/{cls}/{i}.png", (8, 6))
                Image.new("RGB", size, color).save(root / split / cls / f"{i}.png")


def test_image_folder(tmp_path):
    make_folder(tmp_path, {})
    data = load_image_folder(tmp_path)
    assert data.train.images.shape == (4, 3, 6, 8) and data.test.images.shape == (4, 3, 6, 8)
    assert list(data.train.labels) == [0, 0, 1, 1] and data.train.class_names == ("cat", "dog")
    assert data.train.images[0, 0].min() == 255 and data.train.images[3, 2].min() == 255
    assert data.source == str(tmp_path)


def test_image_folder_sizes(tmp_path):
    make_folder(tmp_path, {"val/dog/1.png": (5, 5)})
    with pytest.raises(DataError, match=r"1.png is 5x5 but .*0.png is 8x6"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, image_size=4).test.images.shape == (4, 3, 4, 4)


def test_image_folder_grayscale_and_class_mismatch(tmp_path):
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "c")):
        (tmp_path / split / cls).mkdir(parents=True)
        Image.new("L", (4, 4), 7).save(tmp_path / split / cls / "x.png")
    with pytest.raises(DataError, match="differ"):
        load_image_folder(tmp_path)
    (tmp_path / "test" / "c").rename(tmp_path / "test" / "b")
    assert load_image_folder(tmp_path).train.images.shape == (2, 1, 4, 4)


def test_unknown_dataset_lists_known():
    with pytest.raises(UnknownNameError, match="fashion-mnist.*mnist"):
        load_dataset("imagenet-lt-typo")
    assert {"cifar10", "cifar10-npz", "cifar100", "folder", "npz"} <= set(DATASETS.names())


def test_not_found_lists_places(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILSHIFT_DATA", str(tmp_path))
    with pytest.raises(DataError, match=f"{tmp_path / 'cifar-100-python'}.*tailshift download cifar100"):
        load_dataset("cifar100")


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_system_install():
    data = load_dataset("fashion-mnist")
    assert data.train.images.shape == (60000, 1, 28, 28) and data.test.images.shape == (10000, 1, 28, 28)
    assert data.train.num_classes == 10 and np.bincount(data.test.labels).tolist() == [1000] * 10


def test_links_outside_the_data_root_are_refused_unless_allowed(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    make_folder(root, {})
    outside.mkdir()
    Image.new("RGB", (8, 6), (0, 255, 0)).save(outside / "green.png")
    (root / "train" / "cat" / "2.png").symlink_to(outside / "green.png")
    with pytest.raises(DataError, match=f"2.png resolves to {outside / 'green.png'}, outside the data root {root}"):
        load_dataset("folder", str(root))
    data = load_dataset("folder", str(root), allow_outside_root=True)
    assert len(data.train) == 5 and data.train.images[2, 1].min() == 255


def test_16_bit_and_float_images_are_scaled_not_clipped_and_named_in_the_caveat(tmp_path):
    ramp = (np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) * 83).astype(np.uint16)  # 0 .. 65,000
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(ramp).save(tmp_path / split / name / "0.png")  # Pillow reads it as I;16
            Image.fromarray(ramp.astype(np.float32) / 65535).save(tmp_path / split / name / "1.tif")
    split = load_image_folder(tmp_path)
    assert split.caveat == "4 images of mode I;16 scaled from 0..65535 to 8 bits"  # .tif is not an image extension
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(split.train.images[0, 0], expected) and (expected == 255).mean() < 0.01
    floats = to_8bit(Image.open(tmp_path / "train" / "a" / "1.tif"), "RGB")
    assert floats.mode == "RGB" and np.abs(np.asarray(floats)[..., 0].astype(int) - expected).max() <= 1
