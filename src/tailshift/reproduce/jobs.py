"""A study's jobs and how they run: in parallel single-threaded worker processes, or one after the other each on
several processes (torchrun); SIGTERM stops what a study started, and its worker processes die with it (any
signal). Each finished job is a ``JobResult``."""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import multiprocessing.pool
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig, config_path, load_config
from ..progress import RunCounter
from .statistics import DIVERGED, GROUP_KEYS, HeadScores

#: what a run keeps of each head's metrics
HEAD_KEYS = (*GROUP_KEYS, "collapsed", "untrained", "max_pred_share", "per_class")


@dataclass(frozen=True)
class Job:
    """One training run of a study: which study, run and seed it is, and the config and overrides that make it."""

    study: str  # e.g. "fashion-lt" or "cifar10-lt rho 100"
    run: str  # e.g. "crt": the config suffix, or an ablation's variant
    seed: int
    config: str  # a shipped config name or YAML path
    overrides: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """A readable label for logs and JSON (never parsed back)."""
        return f"{self.study}/{self.run}/seed{self.seed}"

    def resolve(self) -> RunConfig:
        return load_config(config_path(self.config), list(self.overrides))


@dataclass(frozen=True)
class JobResult:
    """What one job's run gave: every head's test scores (none when it diverged), its times and its data."""

    job: Job
    diverged: bool
    seconds: float  # this invocation's wall time for the job
    error: str | None = None  # a diverged run's message
    head: str | None = None  # the method's headline head
    train_seconds: float | None = None  # over every session of the run, resumes included
    cpu_seconds: float | None = None  # absent from runs finished before it was recorded
    heads: dict[str, HeadScores] = field(default_factory=dict)
    output: str | None = None
    data_source: dict | None = None  # {"path", "caveat"} of the data files read

    @property
    def key(self) -> str:
        return self.job.key

    def scores(self, head: str) -> HeadScores:
        """One head's scores, or ``DIVERGED`` for a diverged run (which has none)."""
        return DIVERGED if self.diverged else self.heads[head]

    def summary(self) -> str:
        """The run's outcome in a few words, for its progress line."""
        if self.diverged:
            return "diverged"
        scores = self.heads[self.head]
        all_ = "-" if scores.all is None else f"{scores.all:.2f}"
        return f"{self.head} head All {all_}" + (" (head never trained)" if scores.untrained else "")

    def to_json(self) -> dict:
        """The run as the reports' JSON lists it."""
        identity = {"key": self.key, "study": self.job.study, "run": self.job.run, "seed": self.job.seed}
        if self.diverged:
            return {**identity, "diverged": True, "error": self.error, "seconds": self.seconds}
        return {**identity, "diverged": False, "seconds": self.seconds, "head": self.head,
                "train_seconds": self.train_seconds, "cpu_seconds": self.cpu_seconds,
                "heads": {name: {k: getattr(s, k) for k in (*HEAD_KEYS, "best_all")} for name, s in self.heads.items()},
                "output": self.output, "data_source": self.data_source}


def job_result(job: Job, cfg: RunConfig, metrics: dict, seconds: float) -> JobResult:
    """A finished run's ``metrics.json`` content as a ``JobResult``."""
    best = metrics.get("best_epoch", {})  # absent from runs finished before it was recorded
    heads = {name: HeadScores(**{k: r[k] for k in HEAD_KEYS if k != "per_class"}, per_class=tuple(r["per_class"]),
                              best_all=best.get(name, {}).get("all"))
             for name, r in metrics["heads"].items()}
    return JobResult(job, diverged=False, seconds=round(seconds, 2), head=metrics["default_head"],
                     train_seconds=metrics["train_seconds"], cpu_seconds=metrics.get("cpu_seconds"), heads=heads,
                     output=cfg.output, data_source=metrics["data_source"])


def _run_job(job: Job) -> JobResult:
    from ..engine import DivergenceError, train

    cfg = job.resolve()
    started = time.perf_counter()
    try:
        metrics = train(cfg)
    except DivergenceError as err:
        return JobResult(job, diverged=True, seconds=round(time.perf_counter() - started, 2), error=str(err))
    return job_result(job, cfg, metrics, time.perf_counter() - started)


#: Linux prctl option: the signal a process gets when its parent dies
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies, by any signal (kill -9 included), rather
    than it train on until its next write; its checkpoints are atomic, so the next invocation resumes."""
    import ctypes

    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _init_worker(parent: int | None = None) -> None:
    if parent is not None:  # first: importing torch takes seconds
        die_with_parent(parent)
    import torch

    torch.set_num_threads(1)


def worker_pool(workers: int) -> mp.pool.Pool:
    """``workers`` single-threaded spawned processes that die with this one."""
    return mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(os.getpid(),))


def _run_numbered_job(numbered: tuple[int, Job]) -> tuple[int, JobResult]:
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


def _finished(counter: RunCounter, result: JobResult) -> JobResult:
    counter.finished(result.key, result.seconds, result.summary())
    return result


def run_jobs(jobs: list[Job], workers: int) -> list[JobResult]:
    """Run jobs in ``workers`` single-threaded processes (one process per core beats
    intra-op threads for these small models); results come back in job order, and each
    finished run is reported as it finishes (``RunCounter``)."""
    counter = RunCounter(len(jobs), max(1, min(workers, len(jobs))))
    if workers <= 1:
        _init_worker()
        return [_finished(counter, _run_job(j)) for j in jobs]
    results = [None] * len(jobs)
    # on an exception (SIGTERM included) the pool's exit terminates the workers
    with sigterm_raises(), worker_pool(workers) as pool:
        for i, result in pool.imap_unordered(_run_numbered_job, enumerate(jobs), chunksize=1):
            results[i] = _finished(counter, result)
        pool.close()  # let workers exit cleanly rather than be terminated (no leaked semaphores)
        pool.join()
    return results


def run_jobs_distributed(jobs: list[Job], nproc: int) -> list[JobResult]:
    """Run jobs one after the other, each on ``nproc`` processes of this machine (torchrun, one per
    GPU); a run that fails (a diverged one included) stops the study with its exit code."""
    from ..distributed import check_device, torchrun_command

    configs = [job.resolve() for job in jobs]
    for cfg in configs:  # before any run starts
        check_device(cfg.device, nproc)
    results = []
    counter = RunCounter(len(jobs))
    for job, cfg in zip(jobs, configs):
        started = time.perf_counter()
        with sigterm_raises():
            code = _wait_or_terminate(subprocess.Popen(torchrun_command(nproc, ["train", job.config, *job.overrides])))
        if code != 0:
            raise RuntimeError(f"run {job.key} failed on {nproc} processes (exit code {code}); its output is above")
        metrics = json.loads((Path(cfg.output) / "metrics.json").read_text())
        results.append(_finished(counter, job_result(job, cfg, metrics, time.perf_counter() - started)))
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
    """One worker process per core this process may use, at most 16."""
    return max(1, min(len(os.sched_getaffinity(0)), 16))
