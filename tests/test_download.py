"""`download` against a local HTTP server on loopback (never the internet)."""
import functools
import http.server
import tarfile
import threading

import numpy as np
import pytest

from tailshift.data import sources
from test_sources import make_cifar10, write_idx


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_mnist_format_then_load(server, tmp_path, monkeypatch):
    served, url = server
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(served / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(served / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    monkeypatch.setitem(sources._DOWNLOADS, "fashion-mnist", [url + "missing/", url])  # first mirror fails
    root = sources.download("fashion-mnist", tmp_path / "data")
    split = sources.load_dataset("fashion-mnist", str(tmp_path / "data"))
    assert root == tmp_path / "data" / "fashion-mnist"
    assert split.train.images.shape == (20, 1, 28, 28) and len(split.test) == 10


def test_download_cifar_tarball_is_extracted(server, tmp_path, monkeypatch):
    served, url = server
    make_cifar10(tmp_path / "build" / "cifar-10-batches-py")
    with tarfile.open(served / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(sources._DOWNLOADS, "cifar10", [url + "cifar-10-python.tar.gz"])
    folder = sources.download("cifar10", tmp_path / "data")
    assert folder.name == "cifar-10-batches-py"
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()
    assert sources.load_cifar(folder, 10).train.images.shape[1:] == (3, 32, 32)


def test_unreachable_download_is_one_clear_error(server, tmp_path, monkeypatch):
    _, url = server
    monkeypatch.setitem(sources._DOWNLOADS, "mnist", [url + "nowhere/"])
    with pytest.raises(sources.DataError, match="could not download train-images-idx3-ubyte.gz"):
        sources.download("mnist", tmp_path / "data")
