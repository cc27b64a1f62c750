"""data/build.py: a config's data is prepared once per process for each distinct data config."""
import numpy as np

from tailshift.config import build_config
from tailshift.data import build
from tailshift.data.arrays import ArrayDataset, SplitDataset


def _split():
    labels = np.repeat(np.arange(4), 30)
    images = np.zeros((len(labels), 1, 8, 8), dtype=np.uint8)
    return SplitDataset(ArrayDataset(images, labels), ArrayDataset(images, labels))


def test_prepared_data_is_memoised_by_the_data_config_itself(monkeypatch):
    reads = []
    monkeypatch.setattr(build, "load_dataset", lambda *args: reads.append(args) or _split())
    build.prepare_data.cache_clear()
    try:
        first = build.prepare_data(build_config({}, ["data.longtail.rho=2", "data.groups=count"]).data)
        again = build.prepare_data(build_config({}, ["data.longtail.rho=2.0", "data.groups=count", "seed=5"]).data)
        other = build.prepare_data(build_config({}, ["data.longtail.rho=3", "data.groups=count"]).data)
    finally:
        build.prepare_data.cache_clear()
    assert again is first and other is not first and len(reads) == 2
    assert first.class_counts.tolist() == [30, 23, 18, 15] and other.class_counts.tolist() == [30, 20, 14, 10]
