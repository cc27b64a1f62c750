"""tailshift.samplers: the engine's draws, as torch Samplers whose process shares partition one stream."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import tiny_prepared
from tailshift.config import build_config
from tailshift.engine import Trainer
from tailshift.samplers import ClassAwareSampler, PowerSampler, ReversedSampler, UniformSampler

COUNTS = [50, 20, 9, 4]
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)  # 83 samples: no process count above 1 divides it


def makers():
    """Every sampler, as a function of (num_replicas, rank, drop_last)."""
    return {
        "uniform": lambda **kw: UniformSampler(LABELS, seed=7, **kw),
        "class_aware": lambda **kw: ClassAwareSampler(LABELS, per_class=3, epoch_length=101, seed=7, **kw),
        "power": lambda **kw: PowerSampler(LABELS, 0.5, seed=7, **kw),
        "reversed": lambda **kw: ReversedSampler(LABELS, seed=7, **kw),
    }


def engine_draws(tmp_path, *overrides, epochs=2):
    """The training indices the engine feeds a single-stream method, epoch by epoch, and its data."""
    data = tiny_prepared()
    cfg = build_config({"output": str(tmp_path / "run"), "progress": False, "seed": 3},
                       [f"train.epochs={epochs}", "train.batch_size=32", "method.name=erm", *overrides])
    trainer = Trainer(cfg, data)
    seen, feed = [], trainer.train_arrays.epoch

    def recording(indices, *args, **kwargs):
        seen.append(indices["main"].tolist())
        return feed(indices, *args, **kwargs)

    trainer.train_arrays.epoch = recording
    trainer.fit()
    return seen, data.train.labels


@pytest.mark.parametrize("overrides,public", [
    (["method.params={sampler: uniform}"], lambda y: UniformSampler(y, seed=3)),
    (["method.params={sampler: balanced}", "sampling.per_class=2"],
     lambda y: ClassAwareSampler(y, per_class=2, seed=3)),
    (["method.params={sampler: balanced}", "sampling.balanced=power"],
     lambda y: PowerSampler(y, 0.0, epoch_length="balanced", seed=3)),
    (["method.params={sampler: power, q: 0.5}"], lambda y: PowerSampler(y, 0.5, seed=3)),
    (["method.params={sampler: reversed}"], lambda y: ReversedSampler(y, seed=3)),
], ids=["uniform", "class_aware", "balanced_power", "power", "reversed"])
def test_each_epoch_is_what_the_engine_draws(tmp_path, overrides, public):
    seen, labels = engine_draws(tmp_path, *overrides)
    sampler = public(labels)
    for epoch, drawn in enumerate(seen):
        sampler.set_epoch(epoch)
        assert list(sampler) == drawn
    assert seen[0] != seen[1]  # the epochs differ, so set_epoch is tested


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("kind", list(makers()))
def test_process_shares_are_disjoint_and_together_the_one_process_stream(kind, drop_last):
    make = makers()[kind]
    for epoch in (0, 5):
        whole = make(num_replicas=1, rank=0, drop_last=drop_last)
        whole.set_epoch(epoch)
        stream = np.array(list(whole))
        for replicas in (2, 3, 4):
            shares = []
            for rank in range(replicas):
                sampler = make(num_replicas=replicas, rank=rank, drop_last=drop_last)
                sampler.set_epoch(epoch)
                shares.append(list(sampler))
                assert len(shares[-1]) == len(sampler)
            assert len({len(share) for share in shares}) == 1  # every process steps as often
            # rank r holds positions r, r + R, ...: interleaved, the shares are the stream, each position once
            interleaved = np.array(shares).T.reshape(-1)
            if drop_last:  # the last len % R draws are dropped
                expected = stream[: len(stream) - len(stream) % replicas]
            else:  # padded with the stream's first draws
                expected = np.concatenate([stream, stream[: -len(stream) % replicas]])
            np.testing.assert_array_equal(interleaved, expected)


def test_uniform_shares_hold_disjoint_samples():
    shares = [set(UniformSampler(LABELS, num_replicas=3, rank=r, drop_last=True)) for r in range(3)]
    assert not (shares[0] & shares[1] or shares[0] & shares[2] or shares[1] & shares[2])
    assert len(set.union(*shares)) == len(LABELS) - len(LABELS) % 3


def test_a_data_loader_draws_the_sampler_s_stream():
    dataset = TensorDataset(torch.arange(len(LABELS)), torch.from_numpy(LABELS))
    sampler = ClassAwareSampler(LABELS, seed=1)
    loader = DataLoader(dataset, batch_size=16, sampler=sampler)
    sampler.set_epoch(2)
    index, y = (torch.cat(parts) for parts in zip(*loader))
    assert index.tolist() == list(sampler)
    per_class = torch.bincount(y)  # 200 draws (n_max x C) in visits of 4: every class within one visit of 50
    assert per_class.sum() == 200 and per_class.max() - per_class.min() <= 4


def test_several_processes_default_to_torch_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    sampler = UniformSampler(LABELS)
    assert (sampler.num_replicas, sampler.rank) == (4, 3)
    assert len(sampler) == 21


@pytest.mark.parametrize("make,fragment", [
    (lambda: UniformSampler(LABELS.astype(float)), "labels must be a non-empty 1-d array of integer class"),
    (lambda: UniformSampler(LABELS.reshape(-1, 1)), "got shape (83, 1)"),
    (lambda: UniformSampler(LABELS - 1), "min -1"),
    (lambda: UniformSampler([]), "labels must be a non-empty"),
    (lambda: UniformSampler(LABELS, seed=-1), "seed must be an int >= 0, got -1"),
    (lambda: UniformSampler(LABELS, num_replicas=0), "num_replicas must be an int >= 1, got 0"),
    (lambda: UniformSampler(LABELS, num_replicas=2, rank=2), "rank must be an int in [0, 2) for num_replicas=2, got 2"),
    (lambda: PowerSampler(LABELS, 1.5), "sampler q must be in [0, 1], got 1.5"),
    (lambda: ClassAwareSampler(LABELS, per_class=0), "sampler per_class must be >= 1, got 0"),
    (lambda: ClassAwareSampler(LABELS, epoch_length="epoch"), "epoch_length must be 'dataset', 'balanced' or"),
    (lambda: ReversedSampler(LABELS).set_epoch(-1), "epoch must be an int >= 0, got -1"),
])
def test_bad_input_is_refused_in_one_line(make, fragment):
    with pytest.raises(ValueError) as refused:
        make()
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
