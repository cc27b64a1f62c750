"""What a study writes: markdown sections of cells beside the paper's numbers, the notes every report ends
with, and ``<name>.md`` / ``<name>.json`` stamped with the command line that made them (``Report``)."""
from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from ..io import atomic_write_json, atomic_write_text

#: the measured and paper columns every results table ends with (see ``result_cells``)
RESULT_COLUMNS = ("All", "Many", "Med", "Few", "All, best epoch*", "Paper All", "Paper Many / Med / Few",
                  "runs (diverged, collapsed, untrained)")

#: what the starred column is: LDAM, BBN, CMO and MiSLAS report their best test epoch, this project the final one
BEST_EPOCH_NOTE = ("*All, best epoch: each run's All at its evaluation with the best All (best epoch, chosen on the "
                   "test set, as the original papers report); the final epoch's columns are the headline.")


def paper_numbers() -> dict:
    """The paper's printed numbers by table (``paper.yaml``)."""
    path = resources.files("tailshift.reproduce") / "paper.yaml"
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:  # a damaged install or an edit gone wrong: name the file, in one line
        raise ValueError(f"cannot read {path}: {' '.join(str(err).split())}") from None


@dataclass(frozen=True)
class Section:
    """A markdown table, under an optional heading and paragraph, with an optional line after it."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    heading: str = ""
    text: str = ""
    footer: str = ""

    def lines(self) -> list[str]:
        lines = [""]
        if self.heading:
            lines += [f"## {self.heading}", ""]
        if self.text:
            lines += [self.text, ""]
        lines += [_row(self.columns), "|" + "---|" * len(self.columns), *(_row(r) for r in self.rows)]
        return lines + (["", self.footer] if self.footer else [])


def _row(cells: Sequence[str]) -> str:
    return f"| {' | '.join(cells)} |"


@dataclass(frozen=True)
class Report:
    """A study's outcome: ``<name>.md`` (title, note, sections) and ``<name>.json`` (``data``: plain values,
    dataclasses included) in one folder, both stamped with the command line; the markdown is printed too."""

    name: str
    title: str
    note: str
    sections: tuple[Section, ...]
    data: dict

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", self.note]
        for section in self.sections:
            lines += section.lines()
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> None:
        command = command_line()
        markdown = self.markdown()
        atomic_write_text(folder / f"{self.name}.md", f"{markdown}\nCommand: `{command}`\n")
        atomic_write_json(folder / f"{self.name}.json", {"command": command, **plain(self.data)})
        print(markdown)


def plain(value):
    """``value`` with every dataclass in it turned into a dict, for JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def command_line() -> str:
    """The command that is running, as a user would type it."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


# --- cells ---------------------------------------------------------------------------------------
def result_cells(agg, paper_row: list | None) -> tuple[str, ...]:
    """One row's ``RESULT_COLUMNS``: an ``Aggregate`` beside the paper's [All, Many, Med, Few]."""
    return (fmt(agg.all), fmt(agg.many), fmt(agg.med), fmt(agg.few), fmt(agg.best_all), *paper_cells(paper_row),
            f"{agg.runs} ({agg.diverged}, {agg.collapsed}, {agg.untrained})")


def paper_cells(paper_row: list | None) -> tuple[str, str]:
    """The paper's columns of ``RESULT_COLUMNS``: All, then Many / Med / Few."""
    ref = paper_row or [None] * 4
    return fmt_paper(ref[0]), " / ".join(fmt_paper(x) for x in ref[1:])


def fmt(stat) -> str:
    """``mean ± std`` of a ``Stat``; one healthy run has no spread to show."""
    if stat.mean is None:
        return "-"
    if len(stat.values) == 1:
        return f"{stat.mean:.1f} (1 run)"
    return f"{stat.mean:.1f} ± {stat.std:.1f}"


def fmt_paper(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def paired_cells(pair) -> tuple[str, str, str]:
    """``mean ± std``, ``wins / ties / losses`` and ``p`` of a ``PairedDifference``."""
    if pair.mean is None:
        return "-", "-", "-"
    spread = "" if pair.std is None else f" ± {pair.std:.1f}"
    p = "-" if pair.p is None else "< 0.001" if pair.p < 0.001 else f"{pair.p:.3f}"
    return f"{pair.mean:+.1f}{spread}", f"{pair.wins} / {pair.ties} / {pair.losses}", p


# --- notes ---------------------------------------------------------------------------------------
def seeds_note(seeds: Sequence[int]) -> str:
    """"5 seeds" for seeds 0-4, else which ones, e.g. "15 seeds (5-19)"."""
    seeds = list(seeds)
    if seeds == list(range(len(seeds))):
        return f"{len(seeds)} seeds"
    contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    which = f"{seeds[0]}-{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))
    return f"{len(seeds)} seeds ({which})"


def runs_note(results) -> str:
    """The sentences every study's note ends with: how many runs, how long, on which data (``PlanResults``).

    A report rebuilt from finished runs takes seconds, so the runs' own training time (kept in
    each run's metrics across resumes) is given beside this invocation's wall time."""
    runs, workers = results.runs, results.workers
    trained = sum(r.train_seconds or 0.0 for r in runs)
    return (f"{len(runs)} runs, {workers} worker process{'' if workers == 1 else 'es'}, wall time "
            f"{results.wall_seconds:.0f} s for this invocation (runs already complete in the output folder are "
            f"re-evaluated, not retrained); training time of the runs that did not diverge: {trained:.0f} s of "
            f"worker time.{data_note(runs)}")


def data_note(runs) -> str:
    """A sentence naming the data files behind the runs (``JobResult``), with the caveat of any file known to
    differ from the official data ("" when no run reports its source)."""
    sources = sorted({(r.data_source["path"], r.data_source["caveat"]) for r in runs if r.data_source})
    if not sources:
        return ""
    return " Data: " + "; ".join(f"{path} (**{caveat}**)" if caveat else path for path, caveat in sources) + "."
