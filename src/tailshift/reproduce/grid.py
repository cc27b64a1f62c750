"""One kind of study for every results table: a grid of typed jobs (study x run x seed), the
rows read from the runs' heads, aggregated over seeds, paired seed by seed and printed beside
the paper's numbers. Table 1 (MNIST-family sets), Tables 2, 10 and 11 (CIFAR-LT, one study per
imbalance ratio) are each a ``Grid`` value."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..data.arrays import DataError
from ..data.sources import load_dataset
from .common import (RESULT_COLUMNS, Job, aggregate, by_job, fmt_paired, head_result, overrides_for_run,
                     paired_difference, paper_cells, paper_numbers, result_cells, run_jobs, run_jobs_distributed,
                     runs_note, seed_list, seeds_note, write_outputs)


@dataclass(frozen=True)
class Row:
    """A table row: the run (config suffix) it is read from and the head of that run; a row of the
    paper this project does not implement has no run and says why (``missing``)."""

    name: str
    label: str
    run: str | None = None
    head: str | None = None
    missing: str = ""

    def __post_init__(self):
        if (self.run is None) == (not self.missing):
            raise ValueError(f"row {self.name!r} needs either a run and head or the reason it is missing")


@dataclass(frozen=True)
class Study:
    """One column block of a table: a dataset, at one imbalance ratio where the grid sweeps them."""

    name: str  # e.g. "fashion-lt", "cifar10-lt rho 100"
    config: str  # its runs' shipped configs, "{run}" standing for the run, e.g. "table1/fashion-lt_{run}"
    folder: str  # the runs live in <output>/runs/<folder>/<run>/seed<s>
    overrides: tuple[str, ...]
    paper_path: tuple  # where its numbers are in the grid's section of paper.yaml


@dataclass(frozen=True)
class Grid:
    """A paper table: shipped configs ``<configs>/<dataset>_<run>``, rows read from their heads."""

    name: str  # the reproduce command, the output files' name and the section of paper.yaml
    label: str  # e.g. "Table 2"
    subject: str
    configs: str  # the folder of shipped configs
    rows: tuple[Row, ...]
    datasets: dict  # study dataset -> the source dataset it is built from
    paired: dict = field(default_factory=dict)  # method row -> the baseline rows it is compared with seed by seed
    default_rows: tuple | None = None  # rows run when --methods is not given; None: every row
    sweeps_rho: bool = True  # one study per imbalance ratio (--rhos); else the configs' own rho
    first_runs: tuple = ()  # the longest runs, started first so a worker pool finishes together

    @property
    def title(self) -> str:
        return f"{self.label}: {self.subject}"

    # --- what to run -------------------------------------------------------------------------
    def select_rows(self, methods: Sequence[str] | None = None) -> dict[str, Row]:
        """The rows ``methods`` names (``default_rows`` when None), in the table's order."""
        known = [r.name for r in self.rows]
        wanted = list(methods or self.default_rows or known)
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise ValueError(f"unknown {self.label} method {unknown[0]!r}; known: {', '.join(known)}")
        return {r.name: r for r in self.rows if r.name in wanted}

    def studies(self, datasets: Sequence[str], rhos: Sequence[int] = (), mnist_root: str | None = None) -> list[Study]:
        unknown = [d for d in datasets if d not in self.datasets]
        if unknown:
            raise ValueError(f"unknown {self.label} dataset {unknown[0]!r}; known: {', '.join(self.datasets)}")
        out = []
        for d in datasets:
            root, config = self.data_root(d, mnist_root), f"{self.configs}/{d}_{{run}}"
            if not self.sweeps_rho:
                out.append(Study(d, config, d, root, (d,)))
                continue
            out += [Study(f"{d} rho {rho}", config, f"{d}-rho{rho}", (*root, f"data.longtail.rho={rho}"), (d, rho))
                    for rho in rhos]
        return out

    def data_root(self, dataset: str, mnist_root: str | None) -> tuple[str, ...]:
        """The override that points a dataset built from MNIST at ``--mnist-root`` (nothing for others)."""
        return (f"data.root={mnist_root}",) if mnist_root and self.datasets.get(dataset) == "mnist" else ()

    def available_datasets(self, mnist_root: str | None = None) -> list[str]:
        """The grid's datasets whose files can be found (each source read once)."""
        present = {}
        for source in dict.fromkeys(self.datasets.values()):
            try:
                load_dataset(source, mnist_root if source == "mnist" else None)
                present[source] = True
            except DataError:
                present[source] = False
        return [d for d, source in self.datasets.items() if present[source]]

    def jobs(self, studies: list[Study], rows: dict[str, Row], seeds, out: Path, overrides: Sequence[str]) -> list[Job]:
        """One job per study, distinct run and seed; ``RUN:key=value`` overrides reach only that run."""
        runs = sorted({r.run for r in rows.values() if r.run is not None})
        jobs = [Job(study.name, run, s, study.config.format(run=run),
                    (*study.overrides, f"seed={s}", f"output={out / 'runs' / study.folder / run / f'seed{s}'}",
                     "progress=false", *overrides_for_run(run, list(overrides), runs)))
                for study in studies for run in runs for s in seed_list(seeds)]
        return sorted(jobs, key=lambda j: (j.run not in self.first_runs, j.key))

    # --- what came out -------------------------------------------------------------------------
    def row_values(self, results: list[dict], studies: list[Study], rows: dict[str, Row], seeds) -> dict:
        """study -> row -> one result per seed ({"diverged": True} for a diverged run); rows without a run are left out."""
        found = by_job(results)
        values = {}
        for study in studies:
            values[study.name] = {}
            for row in rows.values():
                if row.run is None:
                    continue
                runs = [found[(study.name, row.run, s)] for s in seed_list(seeds)]
                values[study.name][row.name] = [head_result(r, row.head) for r in runs]
        return values

    def collect(self, results, studies, rows, seeds) -> dict:
        return {study: {row: aggregate(v) for row, v in by_row.items()}
                for study, by_row in self.row_values(results, studies, rows, seeds).items()}

    def pairs(self, results, studies, rows, seeds) -> dict:
        """study -> (method row, baseline row) -> ``paired_difference`` of All, for the compared rows present."""
        values = self.row_values(results, studies, rows, seeds)
        return {study: {(a, b): paired_difference(by_row[a], by_row[b])
                        for a, baselines in self.paired.items() if a in by_row for b in baselines if b in by_row}
                for study, by_row in values.items()}

    def paper_rows(self, studies: list[Study]) -> dict:
        """The paper's figures per study and row as [All, Many, Med, Few] (a single number is All only)."""
        section = paper_numbers()[self.name]
        out = {}
        for study in studies:
            node = section
            for key in study.paper_path:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            out[study.name] = {row: value if isinstance(value, list) else [value, None, None, None]
                               for row, value in node.items()}
        return out

    def markdown(self, table: dict, paper: dict, rows: dict[str, Row], note: str, pairs: dict | None = None) -> str:
        lines = [f"# {self.title}", "", note, "", f"| Dataset | Method | {RESULT_COLUMNS} |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for study, measured in table.items():
            for row in rows.values():
                ref = paper.get(study, {}).get(row.name)
                cells = (result_cells(measured[row.name], ref) if row.run is not None
                         else f"- | - | - | - | {paper_cells(ref)} | not implemented: {row.missing}")
                lines.append(f"| {study} | {row.label} | {cells} |")
        if pairs and any(pairs.values()):
            lines += ["", "## Paired by seed", "",
                      "All accuracy of a method minus a baseline's, seed by seed (same long-tail draw and initial "
                      "weights), over the seeds where both runs are healthy: mean ± std of the differences, the "
                      "seeds it wins / ties / loses, and the two-sided p-value of the sign-flip test of a zero mean "
                      "difference (exact up to 20 seeds, seeded Monte Carlo beyond).", "",
                      "| Dataset | Comparison | Seeds | Difference (points) | Wins / ties / losses | p |",
                      "|---|---|---|---|---|---|"]
            labels = {r.name: r.label for r in self.rows}
            for study, comparisons in pairs.items():
                for (a, b), pair in comparisons.items():
                    lines.append(f"| {study} | {labels[a]} − {labels[b]} | {pair['seeds']} | {fmt_paired(pair)} |")
        return "\n".join(lines) + "\n"

    def check_data(self, jobs: list[Job]) -> None:
        """Fail before any run starts when the data cannot be read (``available_datasets`` has looked)."""

    def appendix(self) -> str:
        """Markdown after the table (the paper's rows not run here, say)."""
        return ""

    # --- the command ------------------------------------------------------------------------------
    def run(self, datasets: Sequence[str] | None, seeds, workers: int, out: Path, overrides: Sequence[str],
            methods: Sequence[str] | None = None, rhos: Sequence[int] = (100,), mnist_root: str | None = None,
            nproc: int = 1) -> dict:
        """Train what is missing, write ``<name>.md`` / ``.json`` in ``out`` and return the table.
        ``nproc`` > 1: each run on that many processes (torchrun), one run after the other."""
        rows = self.select_rows(methods)  # a bad method name is reported before any data is looked for
        studies = self.studies(datasets or self.available_datasets(mnist_root), rhos, mnist_root)
        if not studies:
            raise DataError(f"no data found for {self.label}: pass --datasets (and data.root=... or --mnist-root), "
                            "or see `tailshift download`")
        jobs = self.jobs(studies, rows, seeds, out, overrides)
        self.check_data(jobs)
        started = time.perf_counter()
        if nproc == 1:
            results, used_workers = run_jobs(jobs, workers), workers
        else:  # one run after the other, each on nproc processes: --workers does not apply
            results, used_workers = run_jobs_distributed(jobs, nproc), 1
        wall = time.perf_counter() - started
        table = self.collect(results, studies, rows, seeds)
        pairs = self.pairs(results, studies, rows, seeds)
        source = paper_numbers()[self.name]["source"]
        note = (f"Mean ± std (sample) over {seeds_note(seeds)} of the healthy runs; diverged (non-finite loss), "
                f"collapsed (>90% of test predictions in one class) and untrained (the reported head got no loss in any "
                f"step) runs are counted and left out of the mean. "
                f"Paper: {source}. {runs_note(results, used_workers, wall)}"
                + (f" Each run on {nproc} processes (torchrun), one run after the other." if nproc > 1 else ""))
        md = self.markdown(table, self.paper_rows(studies), rows, note, pairs) + self.appendix()
        write_outputs(out, self.name, md, {
            "table": table, "paired": {s: {f"{a} - {b}": p for (a, b), p in c.items()} for s, c in pairs.items()},
            "runs": results, "wall_seconds": wall, "seeds": seed_list(seeds), "workers": used_workers, "nproc": nproc,
            **({"rhos": list(rhos)} if self.sweeps_rho else {}), "overrides": list(overrides),
            "not_implemented": {r.name: r.missing for r in rows.values() if r.run is None}})
        print(md)
        return table
