"""How runs show their progress: tqdm bars on a terminal, one plain line per epoch or per finished
run when stdout is a file, a pipe or a CI log (where bars print nothing until the end)."""
from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

GROUPS = ("all", "many", "med", "few")


def _percent(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def epoch_line(record: dict, epochs: int) -> str:
    """One epoch of ``curve.json``: stage, epoch i/n, loss, rate, seconds and, when it was evaluated,
    every head's All/Many/Med/Few."""
    parts = [f"{record['stage']} epoch {record['epoch']}/{epochs}", f"loss {record['loss']:.4f}",
             f"lr {record['lr']:.4g}", f"{record['seconds']:.1f} s"]
    parts += [f"{head} All/Many/Med/Few {'/'.join(_percent(r[k]) for k in GROUPS)}"
              for head, r in record.get("test", {}).items()]
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class Progress:
    """A run's progress: step bars while a terminal watches (tqdm's own test, on stderr), and an epoch
    line on ``stream`` when it is not a terminal. ``enabled`` False (``progress=false``): neither."""

    def __init__(self, enabled: bool = True, stream: IO | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.lines = enabled and not self.stream.isatty()

    def steps(self, count: int, label: str):
        return tqdm(range(count), desc=label, leave=False, disable=None if self.enabled else True, dynamic_ncols=True)

    def note(self, text: str) -> None:
        """A line of its own (e.g. a stage's trainable parameter count), unless progress is off."""
        if self.enabled:
            tqdm.write(text, file=self.stream)

    def epoch_end(self, record: dict, epochs: int) -> None:
        if self.lines:
            print(epoch_line(record, epochs), file=self.stream, flush=True)


class RunCounter:
    """One line per finished run of a study when stdout is not a terminal: the run, its reported
    head's All, its wall time, the runs left and the time left: the mean run time so far times the
    runs left, shared by the ``workers`` that run them side by side."""

    def __init__(self, total: int, workers: int = 1, stream: IO | None = None):
        self.total, self.done, self.workers = total, 0, workers
        self.stream = stream or sys.stdout
        self.lines = not self.stream.isatty()
        self.run_seconds = 0.0

    def finished(self, key: str, seconds: float, outcome: str) -> None:
        """Run ``key`` ended after ``seconds`` with ``outcome`` (its reported head's score, or "diverged")."""
        self.done += 1
        self.run_seconds += seconds
        if self.lines:
            left = self.total - self.done
            eta = self.run_seconds / self.done * left / self.workers
            print(f"[{self.done}/{self.total}] {key}  {outcome}  {_duration(seconds)}  "
                  f"{left} run{'' if left == 1 else 's'} left, about {_duration(eta)} left", file=self.stream, flush=True)
