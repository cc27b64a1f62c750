"""Shared machinery of the ``tailshift reproduce`` commands: run a grid of configs
in parallel worker processes, aggregate seeds, print tables beside the paper's."""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from ..config import RunConfig, build_config, read_yaml
from ..io import atomic_write_json, atomic_write_text
from ..progress import RunCounter

GROUP_KEYS = ("all", "many", "med", "few")


def config_path(name: str) -> Path:
    """A shipped config by name (``table1/fashion-lt_crt``) or any YAML path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    folder = Path(str(resources.files("tailshift") / "configs"))
    shipped = folder / f"{name}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
    raise ValueError(f"no config {name!r}: not a YAML file, and not a shipped config (known: {', '.join(known)})")


def paper_numbers() -> dict:
    return yaml.safe_load((resources.files("tailshift.reproduce") / "paper.yaml").read_text())


def overrides_for_run(run: str, overrides: list[str], runs: list[str]) -> list[str]:
    """The overrides that apply to one run of a grid. ``key=value`` applies to every run;
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
            raise ValueError(f"override {item!r} is scoped to run {scope!r}; runs of this grid: {', '.join(runs)}")
        if scope == run:
            out.append(scoped)
    return out


def resolve_config(config: str, overrides: Sequence[str] = ()) -> RunConfig:
    """A shipped config (or YAML path) with overrides applied."""
    return build_config(read_yaml(config_path(config)), list(overrides))


@dataclass(frozen=True)
class Job:
    """One training run of a study: which study, run and seed it is, and the config and overrides that make it."""

    study: str  # e.g. "fashion-lt" or "cifar10-lt rho 100"
    run: str  # e.g. "crt": the config suffix, or an ablation's variant
    seed: int
    config: str
    overrides: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """A readable label for logs and JSON (never parsed back)."""
        return f"{self.study}/{self.run}/seed{self.seed}"

    def resolve(self) -> RunConfig:
        return resolve_config(self.config, self.overrides)


def by_job(results: list[dict]) -> dict[tuple[str, str, int], dict]:
    """Results of ``run_jobs`` by (study, run, seed)."""
    return {(r["study"], r["run"], r["seed"]): r for r in results}


def head_result(result: dict, head: str) -> dict:
    """One head's numbers of a ``run_jobs`` result, or ``{"diverged": True}`` for a diverged run (which has none)."""
    return {"diverged": True} if result["diverged"] else result["heads"][head]


def _run_job(job: Job) -> dict:
    from ..engine import DivergenceError, train

    cfg = job.resolve()
    started = time.perf_counter()
    try:
        metrics = train(cfg)
    except DivergenceError as err:
        return {**_identity(job), "diverged": True, "error": str(err), "seconds": time.perf_counter() - started}
    return _job_result(job, cfg, metrics, time.perf_counter() - started)


def _identity(job: Job) -> dict:
    return {"key": job.key, "study": job.study, "run": job.run, "seed": job.seed}


def _job_result(job: Job, cfg: RunConfig, metrics: dict, seconds: float) -> dict:
    return {
        **_identity(job),
        "diverged": False,
        "seconds": round(seconds, 2),
        "head": metrics["default_head"],
        "train_seconds": metrics["train_seconds"],  # over every session of the run, resumes included
        "cpu_seconds": metrics.get("cpu_seconds"),  # absent from runs finished before it was recorded
        "heads": {h: {k: r[k] for k in (*GROUP_KEYS, "collapsed", "untrained", "max_pred_share", "per_class")}
                  for h, r in metrics["heads"].items()},
        "output": cfg.output,
        "data_source": metrics["data_source"],
    }


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_numbered_job(numbered: tuple[int, Job]) -> tuple[int, dict]:
    return numbered[0], _run_job(numbered[1])


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM (``kill``, a CI timeout) raises SystemExit in the main thread while a study runs, so
    its cleanup stops the worker processes or the torchrun it started instead of leaving them
    training; what they trained is checkpointed, and the next invocation resumes it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_jobs(jobs: list[Job], workers: int) -> list[dict]:
    """Run jobs in ``workers`` single-threaded processes (one process per core beats
    intra-op threads for these small models); results come back in job order, and each
    finished run is reported as it finishes (``RunCounter``)."""
    counter = RunCounter(len(jobs), max(1, min(workers, len(jobs))))
    if workers <= 1:
        _init_worker()
        return [counter.finished(_run_job(j)) for j in jobs]
    results = [None] * len(jobs)
    # on an exception (SIGTERM included) the pool's exit terminates the workers
    with sigterm_raises(), mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        for i, result in pool.imap_unordered(_run_numbered_job, enumerate(jobs), chunksize=1):
            results[i] = counter.finished(result)
        pool.close()  # let workers exit cleanly rather than be terminated (no leaked semaphores)
        pool.join()
    return results


def run_jobs_distributed(jobs: list[Job], nproc: int) -> list[dict]:
    """Run jobs one after the other, each on ``nproc`` processes of this machine (torchrun, one per
    GPU); a run that fails (a diverged one included) stops the study with its exit code."""
    from ..distributed import torchrun_command

    results = []
    counter = RunCounter(len(jobs))
    for job in jobs:
        cfg = job.resolve()
        started = time.perf_counter()
        with sigterm_raises():
            code = _wait_or_terminate(subprocess.Popen(torchrun_command(nproc, ["train", job.config, *job.overrides])))
        if code != 0:
            raise RuntimeError(f"run {job.key} failed on {nproc} processes (exit code {code}); its output is above")
        metrics = json.loads((Path(cfg.output) / "metrics.json").read_text())
        results.append(counter.finished(_job_result(job, cfg, metrics, time.perf_counter() - started)))
    return results


def _wait_or_terminate(process: subprocess.Popen, grace_seconds: float = 60.0) -> int:
    """The process's exit code; if waiting is interrupted, SIGTERM first (torchrun passes it on to
    its workers and waits for them), a kill only after ``grace_seconds``."""
    try:
        return process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 16))


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """The training seeds of a study: a count n means seeds 0 .. n-1."""
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a count ("5": seeds 0-4), an inclusive range ("5-19") or a list ("0,3,7").

    A range or list lets a study grow (more seeds into the same output folder: finished
    runs are re-evaluated, not retrained) or report seeds held out from tuning."""
    bad = ValueError(f"--seeds must be a count (5), an inclusive range (5-19) or a comma-separated list (0,3,7) "
                     f"of non-negative integers, got {text!r}")
    try:
        if "-" in text:
            first, last = (int(x) for x in text.split("-"))
            seeds = list(range(first, last + 1))
        elif "," in text:
            seeds = [int(x) for x in text.split(",")]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise bad from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise bad
    return seeds


def seeds_note(seeds: int | Sequence[int]) -> str:
    """"5 seeds" for seeds 0-4, else which ones, e.g. "15 seeds (5-19)"."""
    seeds = seed_list(seeds)
    if seeds == list(range(len(seeds))):
        return f"{len(seeds)} seeds"
    contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    which = f"{seeds[0]}-{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))
    return f"{len(seeds)} seeds ({which})"


def healthy(run: dict) -> bool:
    """Neither diverged (non-finite loss), nor collapsed (one class takes > 90 % of predictions), nor
    scored on a head that no step trained (CSA's balanced head when no context was ever fused)."""
    return not run.get("diverged") and not run.get("collapsed") and not run.get("untrained")


def aggregate(values: list[dict]) -> dict:
    """Mean and std over the healthy runs; diverged, collapsed and untrained runs are counted, not
    averaged in (a run that is both collapsed and untrained counts as untrained)."""
    healthy_runs = [v for v in values if healthy(v)]
    trained = [v for v in values if not v.get("diverged") and not v.get("untrained")]
    out = {"runs": len(values), "diverged": sum(bool(v.get("diverged")) for v in values),
           "collapsed": sum(bool(v.get("collapsed")) for v in trained),
           "untrained": sum(bool(v.get("untrained")) for v in values if not v.get("diverged"))}
    for key in GROUP_KEYS:
        xs = np.array([v[key] for v in healthy_runs if v[key] is not None], dtype=np.float64)
        out[key] = {"mean": float(xs.mean()) if len(xs) else None,
                    "std": float(xs.std(ddof=1)) if len(xs) > 1 else 0.0 if len(xs) else None,
                    "values": [round(float(x), 2) for x in xs]}
    out["all_runs"] = [round(v["all"], 2) if not v.get("diverged") else None for v in values]
    return out


def paired_difference(a: list[dict], b: list[dict], key: str = "all") -> dict:
    """Seed-paired difference ``a - b`` of ``key`` over the seeds where both runs are healthy.

    Runs of the same seed share the long-tail draw and the initial weights, so pairing
    removes the seed-to-seed spread that dominates these small studies (a std of 3 to 8
    points per method). ``p``: two-sided p-value of the paired sign-flip (permutation)
    test of a zero mean difference, ``None`` with fewer than two pairs.
    """
    diffs = np.array([x[key] - y[key] for x, y in zip(a, b, strict=True) if healthy(x) and healthy(y)], dtype=np.float64)
    n = len(diffs)
    return {"seeds": n, "mean": float(diffs.mean()) if n else None,
            "std": float(diffs.std(ddof=1)) if n > 1 else None,
            "wins": int((diffs > 0).sum()), "ties": int((diffs == 0).sum()), "losses": int((diffs < 0).sum()),
            "p": sign_flip_p(diffs) if n > 1 else None}


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


def fmt_paired(pair: dict) -> str:
    """``mean ± std | wins / ties / losses | p`` of a ``paired_difference``."""
    if pair["mean"] is None:
        return "- | - | -"
    spread = "" if pair["std"] is None else f" ± {pair['std']:.1f}"
    p = "-" if pair["p"] is None else "< 0.001" if pair["p"] < 0.001 else f"{pair['p']:.3f}"
    return f"{pair['mean']:+.1f}{spread} | {pair['wins']} / {pair['ties']} / {pair['losses']} | {p}"


def runs_note(results: list[dict], workers: int, wall: float) -> str:
    """The sentences every reproduce table's note ends with: how many runs, how long, on which data.

    A report rebuilt from finished runs takes seconds, so the runs' own training time (kept in
    each run's metrics across resumes) is given beside this invocation's wall time."""
    trained = sum(r.get("train_seconds") or 0.0 for r in results)
    return (f"{len(results)} runs, {workers} worker process{'' if workers == 1 else 'es'}, wall time {wall:.0f} s for this invocation (runs "
            f"already complete in the output folder are re-evaluated, not retrained); training time of the runs "
            f"that did not diverge: {trained:.0f} s of worker time.{data_note(results)}")


def data_note(results: list[dict]) -> str:
    """A sentence naming the data files behind the runs, with the caveat of any file known to
    differ from the official data ("" when no run reports its source)."""
    sources = sorted({(r["data_source"]["path"], r["data_source"]["caveat"]) for r in results if r.get("data_source")})
    if not sources:
        return ""
    return " Data: " + "; ".join(f"{path} (**{caveat}**)" if caveat else path for path, caveat in sources) + "."


#: the measured and paper columns every reproduce table ends with (see ``result_cells``)
RESULT_COLUMNS = "All | Many | Med | Few | Paper All | Paper Many / Med / Few | runs (diverged, collapsed, untrained)"


def result_cells(agg: dict, paper_row: list | None) -> str:
    """One row's ``RESULT_COLUMNS``: an ``aggregate`` beside the paper's [All, Many, Med, Few]."""
    return (f"{fmt(agg['all'])} | {fmt(agg['many'])} | {fmt(agg['med'])} | {fmt(agg['few'])} | {paper_cells(paper_row)} | "
            f"{agg['runs']} ({agg['diverged']}, {agg['collapsed']}, {agg['untrained']})")


def paper_cells(paper_row: list | None) -> str:
    """The paper's columns of ``RESULT_COLUMNS``: All, then Many / Med / Few."""
    ref = paper_row or [None] * 4
    return f"{fmt_paper(ref[0])} | {' / '.join(fmt_paper(x) for x in ref[1:])}"


def fmt(stat: dict) -> str:
    """``mean ± std`` of an ``aggregate`` entry; one healthy run has no spread to show."""
    if stat["mean"] is None:
        return "-"
    if len(stat.get("values", ())) == 1:
        return f"{stat['mean']:.1f} (1 run)"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def fmt_paper(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def command_line() -> str:
    """The command that is running, as a user would type it."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_outputs(folder: Path, name: str, markdown: str, data: dict) -> None:
    """``name``.md and ``name``.json, both stamped with the command line that made them."""
    command = command_line()
    atomic_write_text(folder / f"{name}.md", f"{markdown}\nCommand: `{command}`\n")
    atomic_write_json(folder / f"{name}.json", {"command": command, **data})
