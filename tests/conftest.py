"""Tiny generated data shared by the tests."""
from __future__ import annotations

import numpy as np
import pytest

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


@pytest.fixture
def prepared():
    return tiny_prepared()
