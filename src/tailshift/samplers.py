"""Re-sampling for your own training loop: ``torch.utils.data.Sampler``s built from the labels.

Each sampler draws exactly what tailshift's engine draws for the same labels, ``seed``,
``stream`` and epoch (the same ``data.sampling`` code), so a loop of your own replays a
run's streams. The engine names a stream ``<stage>/<name>``: ``0/main`` is a single-head
method's (CE, CB-RS, q-power), ``0/uniform`` and ``0/balanced`` are the dual branch's and CSA's.

Several processes (DistributedDataParallel) work as with ``torch.utils.data.DistributedSampler``:
every process draws the same global stream for the epoch (a pure function of seed, stream
and epoch) and keeps every ``num_replicas``-th draw from position ``rank``, so the shares
are disjoint and, interleaved, give the one-process stream. A stream whose length does not
divide by ``num_replicas`` is padded with its own first draws (``drop_last=False``) or has
its last draws dropped (``drop_last=True``) so that every process gets the same count.
Call ``set_epoch(epoch)`` before each epoch, on every process.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .data.sampling import Sampler as StreamDraws
from .data.sampling import SamplerSpec, shard

__all__ = ["ClassAwareSampler", "PowerSampler", "ReversedSampler", "UniformSampler"]


def _class_indices(labels) -> np.ndarray:
    """The labels as a 1-d int64 array, refusing anything that is not class indices >= 0."""
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        shown = f"shape {array.shape}, dtype {array.dtype}" + (f", min {array.min()}" if array.size else "")
        raise ValueError(f"labels must be a non-empty 1-d array of integer class indices >= 0, got {shown}")
    return array.astype(np.int64)


def _place(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """(num_replicas, rank), each defaulting to torch.distributed's when it is initialised, else 1 and 0."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be an int in [0, {num_replicas}) for num_replicas={num_replicas}, got {rank!r}")
    return num_replicas, rank


class _StreamSampler(Sampler[int]):
    """One stream of draws per epoch, of which this process iterates its share."""

    def __init__(self, labels, spec: SamplerSpec, seed: int, stream: str, num_replicas: int | None,
                 rank: int | None, drop_last: bool):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self._draws = StreamDraws(_class_indices(labels), spec, seed, stream)
        self.num_replicas, self.rank = _place(num_replicas, rank)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Which epoch's draw the next iteration gives (the same on every process)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def _share_length(self) -> int:
        n = len(self._draws)
        return n // self.num_replicas if self.drop_last else -(-n // self.num_replicas)

    def __len__(self) -> int:
        return self._share_length()

    def __iter__(self):
        stream = self._draws.epoch_indices(self.epoch)
        if not self.drop_last:
            stream = np.resize(stream, self._share_length() * self.num_replicas)  # wraps round to the first draws
        return iter(shard(stream, self.rank, self.num_replicas).tolist())


class UniformSampler(_StreamSampler):
    """Every sample once per epoch in random order (the natural, long-tailed distribution):
    the engine's ``uniform`` stream."""

    def __init__(self, labels, *, seed: int = 0, stream: str = "0/main", num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool = False):
        super().__init__(labels, SamplerSpec("shuffle"), seed, stream, num_replicas, rank, drop_last)


class ClassAwareSampler(_StreamSampler):
    """The release's class-balanced sampler (CB-RS, q = 0): classes cycled in shuffled order,
    ``per_class`` consecutive draws from each class's own reshuffled cycle of its samples.

    ``epoch_length``: "balanced" (n_max x C draws, the release's), "dataset" (N draws) or an int.
    """

    def __init__(self, labels, *, per_class: int = 4, epoch_length: str | int = "balanced", seed: int = 0,
                 stream: str = "0/main", num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False):
        spec = SamplerSpec("class_aware", per_class=per_class, epoch_length=epoch_length)
        super().__init__(labels, spec, seed, stream, num_replicas, rank, drop_last)


class PowerSampler(_StreamSampler):
    """i.i.d. draws with class probability n_c^q / sum_c' n_c'^q (paper Eq. 2): q = 1 is the
    natural distribution, q = 0 class-balanced, q = 1/2 square-root sampling.

    ``epoch_length``: "dataset" (N draws), "balanced" (n_max x C draws) or an int.
    """

    def __init__(self, labels, q: float, *, epoch_length: str | int = "dataset", seed: int = 0,
                 stream: str = "0/main", num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False):
        super().__init__(labels, SamplerSpec("power", q=q, epoch_length=epoch_length), seed, stream,
                         num_replicas, rank, drop_last)


class ReversedSampler(_StreamSampler):
    """i.i.d. draws with class probability proportional to 1 / n_c (BBN's reversed sampler,
    Zhou et al. 2020): the tail drawn most. The engine's ``reversed`` stream.

    ``epoch_length``: "dataset" (N draws), "balanced" (n_max x C draws) or an int.
    """

    def __init__(self, labels, *, epoch_length: str | int = "dataset", seed: int = 0, stream: str = "0/main",
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False):
        super().__init__(labels, SamplerSpec("reversed", epoch_length=epoch_length), seed, stream,
                         num_replicas, rank, drop_last)
