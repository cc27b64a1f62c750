import numpy as np
import pytest

from tailshift.data.arrays import ArrayDataset, DataError
from tailshift.data.longtail import make_longtail, profile_counts, select_longtail

MNIST_SIZES = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def labels_with(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)]).astype(np.int64)


def test_cifar_totals_match_the_literature():
    assert sum(profile_counts("exp", 10, 5000, 100)) == 12406
    assert sum(profile_counts("exp", 100, 500, 100)) == 10847
    assert profile_counts("exp", 100, 500, 100)[-1] == 5
    assert profile_counts("exp", 10, 5000, 10)[-1] == 500


def test_step_and_none_profiles():
    assert profile_counts("step", 10, 1000, 10) == [1000] * 5 + [100] * 5
    assert profile_counts("none", 3, 7, 100) == [7, 7, 7]


def test_mnist_lt_counts_are_clipped_to_class_size():
    labels = labels_with(MNIST_SIZES)
    ds = ArrayDataset(np.zeros((len(labels), 1, 1, 1), np.uint8), labels)
    lt = make_longtail(ds, "exp", 100, 6000, np.random.RandomState(0))
    assert np.bincount(lt.labels).tolist() == [5923, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]


def test_n_max_defaults_to_n_over_c():
    labels = labels_with([100] * 4)
    ds = ArrayDataset(np.zeros((400, 1, 1, 1), np.uint8), labels)
    lt = make_longtail(ds, "exp", 10, None, np.random.RandomState(0))
    assert np.bincount(lt.labels).tolist() == [100, 46, 21, 10]


def test_selection_is_a_seeded_per_class_shuffle():
    labels = labels_with([10, 10])
    a = select_longtail(labels, [5, 3], np.random.RandomState(0))
    b = select_longtail(labels, [5, 3], np.random.RandomState(0))
    c = select_longtail(labels, [5, 3], np.random.RandomState(1))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert (labels[a[:5]] == 0).all() and (labels[a[5:]] == 1).all()
    # same as the release: np.random.seed(0); per class np.random.shuffle(idx); idx[:n]
    np.random.seed(0)
    expect = []
    for c, n in enumerate([5, 3]):
        idx = np.flatnonzero(labels == c)
        np.random.shuffle(idx)
        expect += idx[:n].tolist()
    assert a.tolist() == expect


@pytest.mark.parametrize("rho", [0.5, 0])
def test_bad_rho_is_refused(rho):
    with pytest.raises(DataError, match="rho must be >= 1"):
        profile_counts("exp", 10, 100, rho)


def test_unknown_profile_lists_known():
    with pytest.raises(DataError, match="known: exp, step, none"):
        profile_counts("linear", 10, 100, 10)


def test_profile_none_keeps_the_data_as_it_is():
    labels = labels_with([50, 7, 3])
    ds = ArrayDataset(np.zeros((60, 1, 1, 1), np.uint8), labels)
    assert np.bincount(make_longtail(ds, "none", 1, None, np.random.RandomState(0)).labels).tolist() == [50, 7, 3]
