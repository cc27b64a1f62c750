import numpy as np
import pytest

from tailshift.data.sampling import Sampler, SamplerSpec, StreamRequest, class_probabilities, shard, stream_spec

COUNTS = [500, 200, 80, 30, 10]


def labels():
    return np.concatenate([np.full(n, c) for c, n in enumerate(COUNTS)]).astype(np.int64)


def test_shuffle_visits_every_sample_once():
    s = Sampler(labels(), SamplerSpec("shuffle"), seed=0)
    idx = s.epoch_indices(0)
    assert sorted(idx.tolist()) == list(range(len(labels())))
    assert idx.tolist() != s.epoch_indices(1).tolist()


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_power_sampler_class_frequencies_follow_eq2(q):
    y = labels()
    s = Sampler(y, SamplerSpec("power", q=q, epoch_length=200_000), seed=0)
    freq = np.bincount(y[s.epoch_indices(0)], minlength=5) / 200_000
    expected = np.array(COUNTS, float) ** q / (np.array(COUNTS, float) ** q).sum()
    np.testing.assert_allclose(freq, expected, atol=0.005)


def test_class_probabilities_endpoints():
    np.testing.assert_allclose(class_probabilities(np.array(COUNTS), 0.0), np.full(5, 0.2))
    np.testing.assert_allclose(class_probabilities(np.array(COUNTS), 1.0), np.array(COUNTS) / sum(COUNTS))


def test_class_aware_is_balanced_in_runs_of_k():
    y = labels()
    s = Sampler(y, SamplerSpec("class_aware", per_class=4, epoch_length="balanced"), seed=0)
    assert len(s) == 500 * 5
    idx = s.epoch_indices(0)
    assert len(idx) == 2500
    freq = np.bincount(y[idx], minlength=5)
    assert freq.tolist() == [500] * 5  # 625 visits of 4, every class visited 125 times
    runs = y[idx].reshape(-1, 4)
    assert (runs == runs[:, :1]).all()  # 4 consecutive draws per class
    # a tail class cycles through all its samples before repeating one
    tail = idx[y[idx] == 4]
    assert sorted(tail[:10].tolist()) == np.flatnonzero(y == 4).tolist()


def test_epochs_are_deterministic_per_seed_stream_and_epoch():
    y = labels()
    a = Sampler(y, SamplerSpec("class_aware"), seed=3, stream="balanced")
    b = Sampler(y, SamplerSpec("class_aware"), seed=3, stream="balanced")
    c = Sampler(y, SamplerSpec("class_aware"), seed=3, stream="other")
    assert a.epoch_indices(2).tolist() == b.epoch_indices(2).tolist()
    assert a.epoch_indices(2).tolist() != c.epoch_indices(2).tolist()


def test_shards_partition_an_epoch():
    idx = np.arange(103)
    parts = [shard(idx, r, 4) for r in range(4)]
    assert all(len(p) == 25 for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"kind": "weird"}, "unknown sampler kind 'weird'"), ({"q": 1.5}, r"q must be in \[0, 1\], got 1.5"),
     ({"epoch_length": "long"}, "epoch_length must be"), ({"per_class": 0}, "per_class must be >= 1")],
)
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerSpec(**kwargs)


def test_class_aware_epoch_shorter_than_a_round_of_classes():
    labels = np.repeat(np.arange(10), 3)
    idx = Sampler(labels, SamplerSpec("class_aware", per_class=2, epoch_length=6), 0).epoch_indices(0)
    assert len(idx) == 6 and len(set(labels[idx])) == 3  # three classes visited, two draws each


@pytest.mark.parametrize("request_, balanced, expected", [
    (StreamRequest("uniform"), "class_aware", SamplerSpec("shuffle")),
    (StreamRequest("balanced"), "class_aware", SamplerSpec("class_aware", per_class=3, epoch_length="balanced")),
    (StreamRequest("balanced"), "power", SamplerSpec("power", q=0.0, epoch_length="balanced")),
    (StreamRequest("power", 0.5), "class_aware", SamplerSpec("power", q=0.5)),
    (StreamRequest("reversed"), "class_aware", SamplerSpec("reversed")),
])
def test_a_stream_request_becomes_the_sampler_the_sampling_config_picks(request_, balanced, expected):
    assert stream_spec(request_, balanced, 3, "balanced") == expected


def test_an_unknown_stream_role_is_refused():
    with pytest.raises(ValueError, match="unknown stream role 'sideways'; known: uniform, balanced, power, reversed"):
        StreamRequest("sideways")
