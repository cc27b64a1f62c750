"""The one planner of every ``tailshift reproduce`` study (tables, ablations, curves): a study is a set of
variants, each a run of a config with overrides and the head read from it, times seeds. A ``Plan`` makes
one job per run and seed, runs them through one runner and gives typed results per variant: the scores
of each seed, their ``Aggregate`` and the seed-paired comparisons it was asked for.

The command line imports this module to list the commands: the runner (torch, the engine) and the
statistics (numpy) are imported when a plan runs."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable, Sequence

#: a variant's place in its report: (block, row), e.g. a table's (study, method row), an ablation's
#: (table, variant label), a curve's (curve label, gamma)
Key = tuple[str, Hashable]


@dataclass(frozen=True)
class Variant:
    """A row (or point) of a report: the run it reads, trained once per seed in ``<output>/runs/<folder>/seed<s>``,
    and the head read from it. Variants that name the same run of a study share its jobs."""

    study: str  # e.g. "fashion-lt" or "cifar10-lt rho 100"
    run: str  # the run's name in the study, e.g. "crt", an ablation's "delta=0.3", a curve's "csa-gamma0.5"
    config: str  # a shipped config name or YAML path
    head: str
    overrides: tuple[str, ...] = ()
    folder: str = ""  # default "<study>/<run>"

    @property
    def run_folder(self) -> str:
        return self.folder or f"{self.study}/{self.run}"


#: the most seeds one study takes: ``--seeds 1000000000`` is refused before any list of them is made
MAX_SEEDS = 10_000


def seed_list(seeds: int | Sequence[int]) -> tuple[int, ...]:
    """The training seeds of a study: a count n means seeds 0 .. n-1; at most ``MAX_SEEDS`` of them,
    distinct, each one a run's ``seed`` may be."""
    from ..config import MAX_SEED

    count = seeds if isinstance(seeds, int) else len(seeds)
    if not 1 <= count <= MAX_SEEDS:
        raise ValueError(f"a study takes 1 to {MAX_SEEDS} seeds, got {count}")
    out = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    if not 0 <= min(out) <= max(out) <= MAX_SEED:
        raise ValueError(f"seeds must be in [0, {MAX_SEED}], got {min(out)} .. {max(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {len(out) - len(set(out))} repeated in {list(out)}")
    return out


def overrides_for_run(run: str, overrides: Sequence[str], runs: Sequence[str]) -> list[str]:
    """The overrides that apply to one run of a study. ``key=value`` applies to every run;
    ``RUN:key=value`` only to that run's configs, for settings that exist only there
    (e.g. ``csa:method.params.warmup_epochs=1`` when shortening the schedule)."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if ":" not in key:
            out.append(item)
            continue
        scope, scoped = item.split(":", 1)
        if scope not in runs:
            raise ValueError(f"override {item!r} is scoped to run {scope!r}; runs of this study: {', '.join(runs)}")
        if scope == run:
            out.append(scoped)
    return out


@dataclass(frozen=True)
class Plan:
    """Variants (by ``Key``, in report order) x seeds (a count n: seeds 0 .. n-1); ``comparisons`` are the pairs
    of variants whose All is compared seed by seed; ``first_runs`` (the longest) start first, so a worker pool
    finishes together. Variants naming the same run of a study must agree on its config, overrides and folder."""

    variants: dict[Key, Variant]
    seeds: tuple[int, ...]
    comparisons: tuple[tuple[Key, Key], ...] = ()
    first_runs: tuple[str, ...] = ()
    runs: dict[tuple[str, str], Variant] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "seeds", seed_list(self.seeds))
        runs = {}
        for variant in self.variants.values():
            shared = runs.setdefault((variant.study, variant.run), variant)
            if (shared.config, shared.overrides, shared.run_folder) != (variant.config, variant.overrides,
                                                                        variant.run_folder):
                raise ValueError(f"run {variant.study}/{variant.run} is planned with two configs: "
                                 f"{shared.config} {list(shared.overrides)} and {variant.config} {list(variant.overrides)}")
        object.__setattr__(self, "runs", runs)

    def jobs(self, output: Path) -> list:
        """One ``Job`` per run and seed, the ``first_runs`` first, then by key."""
        from .jobs import Job

        jobs = [Job(v.study, v.run, s, v.config,
                    (*v.overrides, f"seed={s}", f"output={Path(output) / 'runs' / v.run_folder / f'seed{s}'}",
                     "progress=false"))
                for v in self.runs.values() for s in self.seeds]
        return sorted(jobs, key=lambda j: (j.run not in self.first_runs, j.key))

    def run(self, output: Path, workers: int | None = None, nproc: int = 1) -> PlanResults:
        """Train what ``output`` does not hold yet (finished runs are re-read) and collect the results, on ``workers``
        processes (None: one per core). ``nproc`` > 1: each run on that many processes (torchrun), one run after
        the other (``workers`` does not apply)."""
        from .jobs import default_workers, run_jobs, run_jobs_distributed

        jobs = self.jobs(output)
        self.check(jobs, workers, nproc)
        started = time.perf_counter()
        if nproc == 1:
            workers = workers or default_workers()
            results = run_jobs(jobs, workers)
        else:
            results, workers = run_jobs_distributed(jobs, nproc), 1
        return self.results(results, time.perf_counter() - started, workers, nproc)

    @staticmethod
    def check(jobs: list, workers: int | None, nproc: int) -> None:
        """Refuse, before the first run starts, a bad ``workers`` or ``nproc`` and any run whose config (its
        scoped overrides included) does not resolve, method params too: one line naming the run. One seed
        per run is enough: the seeds are checked by ``seed_list``."""
        from ..resolve import resolve_run

        if workers is not None and (isinstance(workers, bool) or workers < 1):
            raise ValueError(f"--workers must be >= 1 (or left out: one per core), got {workers}")
        if isinstance(nproc, bool) or nproc < 1:
            raise ValueError(f"--nproc must be >= 1 (processes per run), got {nproc}")
        checked = set()
        for job in jobs:
            if (job.study, job.run) not in checked:
                checked.add((job.study, job.run))
                try:
                    resolve_run(job.resolve())
                except ValueError as err:
                    raise ValueError(f"run {job.key}: {err}") from None

    def results(self, runs: list, wall_seconds: float = 0.0, workers: int = 1, nproc: int = 1) -> PlanResults:
        """``runs`` (``JobResult``, one per job) read per variant and seed, aggregated and compared."""
        from .statistics import aggregate, paired_difference

        found = {(r.job.study, r.job.run, r.job.seed): r for r in runs}
        scores = {key: tuple(found[(v.study, v.run, s)].scores(v.head) for s in self.seeds)
                  for key, v in self.variants.items()}
        return PlanResults(self, tuple(runs), scores, {key: aggregate(list(s)) for key, s in scores.items()},
                           {(a, b): paired_difference(scores[a], scores[b]) for a, b in self.comparisons},
                           wall_seconds, workers, nproc)


@dataclass(frozen=True)
class PlanResults:
    """What a plan gave: its runs (``JobResult``, in job order), each variant's ``HeadScores`` per seed and their
    ``Aggregate``, the ``PairedDifference`` of each comparison, and how the runs were run."""

    plan: Plan
    runs: tuple
    scores: dict
    aggregates: dict
    paired: dict
    wall_seconds: float
    workers: int
    nproc: int

    def table(self) -> dict[str, dict[Hashable, object]]:
        """The aggregates by block, then row, in the plan's order."""
        table: dict[str, dict] = {}
        for (block, row), agg in self.aggregates.items():
            table.setdefault(block, {})[row] = agg
        return table
