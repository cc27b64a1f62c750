"""`download` with the network replaced by a fake `fetch_url` (tests never go online)."""
import hashlib
import shutil
import tarfile
import urllib.error

import numpy as np
import pytest

from tailshift.data import sources
from test_sources import make_cifar10, write_idx


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """Files served by URL; any other URL fails like an unreachable host. Returns (served folder, fetched URLs)."""
    served = tmp_path / "served"
    served.mkdir()
    fetched = []

    def fake_fetch(url, dest):
        fetched.append(url)
        name = url.rsplit("/", 1)[1]
        if not url.startswith("https://good.example/") or not (served / name).is_file():
            raise urllib.error.URLError(f"cannot reach {url}")
        shutil.copyfile(served / name, dest)

    monkeypatch.setattr(sources, "fetch_url", fake_fetch)
    return served, fetched


def serve_mnist_format(served, monkeypatch, name="fashion-mnist", corrupt=None):
    """Four tiny idx files, pinned under `name`; `corrupt` names one served with other bytes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(served / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(served / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    monkeypatch.setitem(sources.DOWNLOAD_SHA256, name, {p.name: sha256(p) for p in sorted(served.glob("*.gz"))})
    if corrupt:
        (served / corrupt).write_bytes(b"tampered")
    monkeypatch.setitem(sources.MIRRORS, name, ["https://bad.example/", "https://good.example/"])


def test_download_mnist_format_then_load(mirror, tmp_path, monkeypatch):
    served, fetched = mirror
    serve_mnist_format(served, monkeypatch)
    root = sources.download("fashion-mnist", tmp_path / "data")
    split = sources.load_dataset("fashion-mnist", str(tmp_path / "data"))
    assert root == tmp_path / "data" / "fashion-mnist"
    assert split.train.images.shape == (20, 1, 28, 28) and len(split.test) == 10
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["fashion-mnist"]  # no staging folder left
    assert any(u.startswith("https://bad.example/") for u in fetched)  # the first mirror failed, the second served
    fetched.clear()
    assert sources.download("fashion-mnist", tmp_path / "data") == root and fetched == []  # complete: nothing fetched


def test_download_cifar_tarball_is_checked_and_extracted(mirror, tmp_path, monkeypatch):
    served, _ = mirror
    make_cifar10(tmp_path / "build" / "cifar-10-batches-py")
    with tarfile.open(served / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(sources.DOWNLOAD_SHA256, "cifar10", {"cifar-10-python.tar.gz": sha256(served / "cifar-10-python.tar.gz")})
    monkeypatch.setitem(sources.MIRRORS, "cifar10", ["https://good.example/"])
    folder = sources.download("cifar10", tmp_path / "data")
    assert folder == tmp_path / "data" / "cifar-10-batches-py"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cifar-10-batches-py"]  # archive and staging gone
    assert sources.load_cifar(folder, 10).train.images.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("corrupt", [None, "t10k-labels-idx1-ubyte.gz"])
def test_failed_download_leaves_nothing_behind(mirror, tmp_path, monkeypatch, corrupt):
    served, _ = mirror
    serve_mnist_format(served, monkeypatch, "mnist", corrupt)
    if corrupt is None:  # unreachable: the last file is not served anywhere
        (served / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(sources.DataError, match="could not download t10k-labels-idx1-ubyte.gz") as err:
        sources.download("mnist", tmp_path / "new" / "data")
    assert "\n" not in str(err.value)
    if corrupt:
        assert "does not match expected" in str(err.value)  # the digest, not the transfer, refused it
    assert not (tmp_path / "new").exists()  # not even the folders it had to create


def test_existing_incomplete_folder_is_refused_not_patched(mirror, tmp_path, monkeypatch):
    served, fetched = mirror
    serve_mnist_format(served, monkeypatch)
    target = tmp_path / "data" / "fashion-mnist"
    target.mkdir(parents=True)
    shutil.copyfile(served / "train-images-idx3-ubyte.gz", target / "train-images-idx3-ubyte.gz")
    lacking = "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, train-labels-idx1-ubyte.gz"
    with pytest.raises(sources.DataError, match=f"fashion-mnist exists but lacks or has altered {lacking}; delete the"):
        sources.download("fashion-mnist", tmp_path / "data")
    assert fetched == [] and [p.name for p in target.iterdir()] == ["train-images-idx3-ubyte.gz"]


def test_every_downloadable_file_has_a_pinned_sha256_and_https_comes_first():
    assert set(sources.DOWNLOAD_SHA256) == set(sources.MIRRORS)
    for name, files in sources.DOWNLOAD_SHA256.items():
        assert sources.MIRRORS[name][0].startswith("https://")
        assert files and all(len(d) == 64 and int(d, 16) >= 0 for d in files.values())
