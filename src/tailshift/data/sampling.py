"""Samplers: which training indices each epoch of a stream visits.

A method asks for streams by role (``StreamRequest``); ``stream_spec`` turns a request into the
sampler the run's ``sampling`` config picks, so the engine asks this module, never the method,
how a stream draws. A sampler never touches images: it turns labels into index arrays, so the same
samplers drive a dataset held as one tensor on the GPU (gather by index) and a
user's own loop. Each epoch's draw is a pure function of (seed, stream, epoch),
so resuming at an epoch boundary replays exactly and ranks of a distributed run
can slice one shared permutation.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SAMPLER_KINDS = ("shuffle", "power", "class_aware", "reversed")
STREAM_ROLES = ("uniform", "balanced", "power", "reversed")


@dataclass(frozen=True)
class StreamRequest:
    """A stream by role: "uniform" (every sample once per epoch), "balanced"
    (q = 0, in the form the run's ``sampling`` config picks), "power" with q, or
    "reversed" (class probability proportional to 1 / n, BBN's re-balancing branch)."""

    role: str
    q: float = 1.0

    def __post_init__(self):
        if self.role not in STREAM_ROLES:
            raise ValueError(f"unknown stream role {self.role!r}; known: {', '.join(STREAM_ROLES)}")


@dataclass(frozen=True)
class SamplerSpec:
    """What a stream draws.

    kind:
      shuffle      every sample once per epoch, in random order (uniform, q = 1)
      power        i.i.d. draws with class probability n_k^q / sum n^q (Eq. 2)
      class_aware  classes cycled in shuffled order, ``per_class`` consecutive
                   samples from each (the release's CB-RS sampler; q = 0)
      reversed     i.i.d. draws with class probability 1/n_k / sum 1/n (BBN's reversed
                   sampler, Zhou et al. 2020, Eq. 1; Eq. 2 with q = -1)
    epoch_length: "dataset" (N draws), "balanced" (n_max x C draws, as the
      release's balanced sampler), or an int.
    """

    kind: str = "shuffle"
    q: float = 1.0
    per_class: int = 4
    epoch_length: str | int = "dataset"

    def __post_init__(self):
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"unknown sampler kind {self.kind!r}; known: {', '.join(SAMPLER_KINDS)}")
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"sampler q must be in [0, 1], got {self.q}")
        if self.per_class < 1:
            raise ValueError(f"sampler per_class must be >= 1, got {self.per_class}")
        if isinstance(self.epoch_length, str) and self.epoch_length not in ("dataset", "balanced"):
            raise ValueError(
                f"sampler epoch_length must be 'dataset', 'balanced' or a positive int, got {self.epoch_length!r}"
            )
        if not isinstance(self.epoch_length, str) and self.epoch_length < 1:
            raise ValueError(f"sampler epoch_length must be positive, got {self.epoch_length}")


def stream_spec(request: StreamRequest, balanced: str, per_class: int, balanced_epoch: str) -> SamplerSpec:
    """The sampler of a method's stream request under the run's sampling config (``sampling.balanced``,
    ``per_class``, ``balanced_epoch``: the form a balanced stream takes)."""
    if request.role == "uniform":
        return SamplerSpec(kind="shuffle")
    if request.role == "balanced":
        if balanced == "class_aware":
            return SamplerSpec(kind="class_aware", per_class=per_class, epoch_length=balanced_epoch)
        return SamplerSpec(kind="power", q=0.0, epoch_length=balanced_epoch)
    if request.role == "reversed":
        return SamplerSpec(kind="reversed")
    return SamplerSpec(kind="power", q=request.q)


def class_probabilities(counts: np.ndarray, q: float) -> np.ndarray:
    """p_k = n_k^q / sum_k' n_k'^q (paper Eq. 2); empty classes get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.where(counts > 0, counts, 0.0) ** q
    weights[counts == 0] = 0.0
    return weights / weights.sum()


class Sampler:
    """Index arrays per epoch for one stream of one training set."""

    def __init__(self, labels: np.ndarray, spec: SamplerSpec, seed: int, stream: str = "main"):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.spec = spec
        self.seed = seed
        self.stream_key = zlib.crc32(stream.encode())
        num_classes = int(self.labels.max()) + 1
        self.counts = np.bincount(self.labels, minlength=num_classes)
        self.members = [np.flatnonzero(self.labels == c) for c in range(num_classes)]

    def __len__(self) -> int:
        length = self.spec.epoch_length
        if length == "dataset":
            return len(self.labels)
        if length == "balanced":
            return int(self.counts.max()) * int((self.counts > 0).sum())
        return int(length)

    def rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream_key, epoch])

    def epoch_indices(self, epoch: int) -> np.ndarray:
        rng = self.rng(epoch)
        n = len(self)
        if self.spec.kind == "shuffle":
            reps = -(-n // len(self.labels))
            return np.concatenate([rng.permutation(len(self.labels)) for _ in range(reps)])[:n]
        if self.spec.kind in ("power", "reversed"):
            q = -1.0 if self.spec.kind == "reversed" else self.spec.q
            per_sample = class_probabilities(self.counts, q)[self.labels] / self.counts[self.labels]
            return rng.choice(len(self.labels), size=n, p=per_sample / per_sample.sum())
        return self._class_aware(rng, n)

    def _class_aware(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Cycle shuffled classes; take ``per_class`` consecutive draws from each class's own reshuffled cycle."""
        k = self.spec.per_class
        present = np.flatnonzero(self.counts > 0)
        visits = -(-n // k)
        rounds = -(-visits // len(present))
        class_seq = np.concatenate([rng.permutation(present) for _ in range(rounds)])[:visits]
        out = np.empty((visits, k), dtype=np.int64)
        for c in present:
            slots = np.flatnonzero(class_seq == c)
            if len(slots) == 0:  # an epoch shorter than one round of the classes skips some
                continue
            need = len(slots) * k
            members = self.members[c]
            cycles = -(-need // len(members))
            draws = np.concatenate([rng.permutation(members) for _ in range(cycles)])[:need]
            out[slots] = draws.reshape(len(slots), k)
        return out.reshape(-1)[:n]


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of an epoch (every rank draws the same permutation, then strides it)."""
    usable = len(indices) - len(indices) % world_size
    return indices[rank:usable:world_size]
