"""Seeds of one study row summarised: mean and spread over the healthy runs, and two rows paired seed by
seed with the sign-flip test of their difference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the accuracy groups of a head: All, then Many / Med / Few shot classes
GROUP_KEYS = ("all", "many", "med", "few")


@dataclass(frozen=True)
class HeadScores:
    """One head's test accuracy (%) in one run; a group without classes is None. A diverged run (non-finite
    loss) has no scores; a collapsed head puts > 90 % of its predictions in one class; an untrained head got
    no loss in any step (CSA's balanced head when no context was ever fused)."""

    all: float | None = None
    many: float | None = None
    med: float | None = None
    few: float | None = None
    collapsed: bool = False
    untrained: bool = False
    max_pred_share: float | None = None
    per_class: tuple[float | None, ...] = ()
    diverged: bool = False
    best_all: float | None = None  # All at the run's best test epoch (metrics.json's best_epoch); None: not recorded

    @property
    def healthy(self) -> bool:
        """Neither diverged, nor collapsed, nor scored on a head that no step trained."""
        return not (self.diverged or self.collapsed or self.untrained)


#: what a diverged run reads as, whichever head is asked for
DIVERGED = HeadScores(diverged=True)


@dataclass(frozen=True)
class Stat:
    """One group's accuracy over the healthy runs: mean, sample std (0 for one run, None for none) and the values."""

    mean: float | None
    std: float | None
    values: tuple[float, ...]


@dataclass(frozen=True)
class Aggregate:
    """A row's runs: how many, how many diverged / collapsed / untrained, each group's ``Stat`` over the healthy
    ones (and that of the All at each run's best test epoch), and every run's All (None: diverged) in seed order."""

    runs: int
    diverged: int
    collapsed: int
    untrained: int
    all: Stat
    many: Stat
    med: Stat
    few: Stat
    best_all: Stat
    all_runs: tuple[float | None, ...]


@dataclass(frozen=True)
class PairedDifference:
    """Seed-paired difference of two rows' All over the seeds where both runs are healthy: its mean and std,
    the seeds won / tied / lost, and the two-sided sign-flip p-value (None below two pairs)."""

    seeds: int
    mean: float | None
    std: float | None
    wins: int
    ties: int
    losses: int
    p: float | None


def aggregate(scores: list[HeadScores]) -> Aggregate:
    """Mean and std over the healthy runs; diverged, collapsed and untrained runs are counted, not averaged in
    (a run that is both collapsed and untrained counts as untrained)."""
    healthy = [s for s in scores if s.healthy]
    trained = [s for s in scores if not s.diverged and not s.untrained]
    stats = {}
    for key in (*GROUP_KEYS, "best_all"):
        xs = np.array([getattr(s, key) for s in healthy if getattr(s, key) is not None], dtype=np.float64)
        stats[key] = Stat(mean=float(xs.mean()) if len(xs) else None,
                          std=float(xs.std(ddof=1)) if len(xs) > 1 else 0.0 if len(xs) else None,
                          values=tuple(round(float(x), 2) for x in xs))
    return Aggregate(runs=len(scores), diverged=sum(s.diverged for s in scores),
                     collapsed=sum(s.collapsed for s in trained),
                     untrained=sum(s.untrained for s in scores if not s.diverged), **stats,
                     all_runs=tuple(None if s.diverged else round(s.all, 2) for s in scores))


def paired_difference(a: list[HeadScores], b: list[HeadScores], key: str = "all") -> PairedDifference:
    """Seed-paired difference ``a - b`` of ``key`` over the seeds where both runs are healthy.

    Runs of the same seed share the long-tail draw and the initial weights, so pairing removes the
    seed-to-seed spread that dominates these small studies (a std of 3 to 8 points per method).
    """
    diffs = np.array([getattr(x, key) - getattr(y, key) for x, y in zip(a, b, strict=True) if x.healthy and y.healthy],
                     dtype=np.float64)
    n = len(diffs)
    return PairedDifference(seeds=n, mean=float(diffs.mean()) if n else None,
                            std=float(diffs.std(ddof=1)) if n > 1 else None,
                            wins=int((diffs > 0).sum()), ties=int((diffs == 0).sum()), losses=int((diffs < 0).sum()),
                            p=sign_flip_p(diffs) if n > 1 else None)


def sign_flip_p(diffs: np.ndarray, exact_up_to: int = 20, draws: int = 200_000) -> float:
    """Two-sided p-value of the sign-flip test: the share of sign patterns whose |sum| reaches the
    observed |sum| (under a zero-mean null each difference is equally likely + or -). Exact by
    enumerating all 2^n patterns up to ``exact_up_to`` pairs, else Monte Carlo with a fixed seed."""
    n = len(diffs)
    observed = abs(diffs.sum()) - 1e-9 * max(1.0, abs(diffs).sum())  # float-sum slack: ties count as extreme
    if n <= exact_up_to:
        hits, chunk = 0, 1 << min(n, 15)
        bits = np.arange(n)
        for start in range(0, 1 << n, chunk):
            codes = np.arange(start, min(start + chunk, 1 << n))
            signs = 1.0 - 2.0 * ((codes[:, None] >> bits) & 1)
            hits += int((np.abs(signs @ diffs) >= observed).sum())
        return hits / (1 << n)
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(draws, n))
    return (int((np.abs(signs @ diffs) >= observed).sum()) + 1) / (draws + 1)
