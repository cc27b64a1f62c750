import numpy as np
import pytest

from tailshift.data.arrays import ArrayDataset, DataError
from tailshift.data.context import (
    PALETTES,
    TAB10,
    _sequential_choice,
    add_label_noise,
    colourize,
    make_coloured_test,
    make_coloured_train,
)
from tailshift.data.longtail import make_longtail

MNIST_SIZES = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def mnist_shaped(size=2):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(MNIST_SIZES)]).astype(np.int64)
    return ArrayDataset(np.full((len(labels), 1, size, size), 200, np.uint8), labels)


def test_cmnist_lt_class_counts_match_the_release():
    rng = np.random.RandomState(0)
    lt = make_longtail(mnist_shaped(), "exp", 100, 6000, rng)
    coloured = make_coloured_train(lt, 0.25, 5, rng)
    assert np.bincount(coloured.labels).tolist() == [5513, 3643, 2282, 1389, 860, 490, 281, 194, 106, 51]


def test_vectorised_choice_replays_numpy_choice_calls():
    p = np.random.RandomState(3).rand(40, 6)
    rng_a, rng_b = np.random.RandomState(7), np.random.RandomState(7)
    fast = _sequential_choice(rng_a, p)
    slow = [rng_b.choice(6, p=row / row.sum()) for row in p]
    assert fast.tolist() == slow
    assert rng_a.random_sample() == rng_b.random_sample()  # streams stay aligned


def test_noise_flips_a_quarter_never_to_the_true_label():
    labels = np.repeat(np.arange(4), [400, 200, 100, 100]).astype(np.int64)
    noisy = add_label_noise(labels, 0.25, 4, np.random.RandomState(0))
    flipped = noisy != labels
    assert flipped.sum() == 200
    # drawn proportionally to counts: class 0 (half the data) receives most flips
    assert np.bincount(noisy[flipped], minlength=4)[0] > np.bincount(noisy[flipped], minlength=4)[3]


def test_zero_noise_still_draws_the_shuffle():
    labels = np.repeat(np.arange(2), 5).astype(np.int64)
    rng = np.random.RandomState(0)
    assert (add_label_noise(labels, 0.0, 2, rng) == labels).all()
    ref = np.random.RandomState(0)
    ref.shuffle(np.arange(10))
    assert rng.random_sample() == ref.random_sample()


def test_head_colours_vary_tail_colours_are_fixed():
    labels = np.repeat(np.arange(10), 300).astype(np.int64)
    ds = ArrayDataset(np.full((len(labels), 1, 2, 2), 255, np.uint8), labels)
    out = make_coloured_train(ds, 0.0, 5, np.random.RandomState(0))
    assert out.images.shape == (3000, 3, 2, 2)
    colours = out.images[:, :, 0, 0]
    palette = np.round(255 * TAB10).astype(np.uint8)
    for c in range(5, 10):
        assert (colours[labels == c] == palette[c]).all()
    for c in range(5):
        distinct = {tuple(x) for x in colours[labels == c]}
        assert len(distinct) == 10


def test_test_colours_are_uniform_and_labels_kept():
    labels = np.repeat(np.arange(10), 200).astype(np.int64)
    ds = ArrayDataset(np.full((2000, 1, 1, 1), 255, np.uint8), labels)
    out = make_coloured_test(ds, np.random.RandomState(0))
    assert (out.labels == labels).all()
    palette = np.round(255 * TAB10).astype(np.uint8)
    tail = out.images[labels == 9][:, :, 0, 0]
    assert len({tuple(x) for x in tail}) == 10
    hits = [(tail == palette[k]).all(1).mean() for k in range(10)]
    assert min(hits) > 0.03


def test_colourize_truncates_toward_zero():
    img = np.array([[[[3]]]], np.uint8)
    out = colourize(img, np.array([0]))
    assert out[0, :, 0, 0].tolist() == [int(3 * c) for c in TAB10[0]]


def test_palettes_hold_the_release_tab10_colours_and_seaborn_deep():
    # the release's sns.color_palette() without a theme = matplotlib's tab10 cycle (docs/protocol-notes.md)
    tab10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    assert [("#%02x%02x%02x" % tuple(np.round(255 * c).astype(int))) for c in PALETTES["tab10"]] == tab10
    assert PALETTES["tab10"][0].tolist() == [31 / 255, 119 / 255, 180 / 255]
    assert PALETTES["deep"][0].tolist() == [0x4C / 255, 0x72 / 255, 0xB0 / 255]
    # grey 255 x colour, truncated: a full-intensity pixel of tail class 9 is exactly #17becf
    out = colourize(np.full((1, 1, 1, 1), 255, np.uint8), np.array([9]))
    assert out[0, :, 0, 0].tolist() == [0x17, 0xBE, 0xCF]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 on torch's __array_wrap__, as in the release
def test_colourize_matches_the_release_arithmetic():
    # the release: a uint8 torch image (H, W, 3) times the palette's float64 RGB, assigned back into
    # uint8 (truncation); every grey level against every colour must give the same bytes
    import torch

    grey = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16).repeat(10, axis=0)
    ours = colourize(grey, np.arange(10))
    release = torch.from_numpy(np.repeat(grey[:, 0, :, :, None], 3, axis=-1).copy())
    for i in range(10):
        release[i] = release[i] * PALETTES["tab10"][i]
    assert (ours == release.permute(0, 3, 1, 2).numpy()).all()


def test_colour_needs_grey_input():
    with pytest.raises(DataError, match="grey images"):
        colourize(np.zeros((1, 3, 2, 2), np.uint8), np.array([0]))


def test_prepared_coloured_data_keeps_its_noise_free_labels(monkeypatch):
    from tailshift.config import build_config
    from tailshift.data import build
    from tailshift.data.arrays import SplitDataset

    split = SplitDataset(mnist_shaped(), mnist_shaped())
    monkeypatch.setattr(build, "load_dataset", lambda name, root, allow_outside_root=False: split)
    build.prepare_data.cache_clear()
    cfg = build_config({}, ["data.dataset=mnist", "data.context.enabled=true", "data.longtail.n_max=6000"]).data
    data = build.prepare_data(cfg)
    build.prepare_data.cache_clear()
    flipped = data.clean_labels != data.train.labels
    assert flipped.mean() == pytest.approx(0.25, abs=0.001)
    assert np.bincount(data.clean_labels).tolist() == [5923, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    # tab10 by default, seaborn "deep" on request: the same draws, other colours
    tail = data.train.images[data.train.labels == 9][:, :, 0, 0]
    assert (tail == np.floor(200 * TAB10[9]).astype(np.uint8)).all()
    deep = build.prepare_data(build_config({}, ["data.dataset=mnist", "data.context.enabled=true",
                                                "data.longtail.n_max=6000", "data.context.palette=deep"]).data)
    build.prepare_data.cache_clear()
    assert (deep.train.labels == data.train.labels).all()
    assert (deep.train.images[deep.train.labels == 9][:, :, 0, 0] == np.floor(200 * PALETTES["deep"][9]).astype(np.uint8)).all()
