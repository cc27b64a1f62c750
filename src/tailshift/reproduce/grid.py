"""A results table as a ``Grid``: rows read from the heads of shipped configs' runs, for each study (a dataset,
at one imbalance ratio where the grid sweeps them), planned as one ``Plan`` and printed beside the paper's
numbers, with the rows it pairs compared seed by seed. Table 1 (MNIST-family sets), Tables 2, 10 and 11
(CIFAR-LT) and Table 3 (ImageNet-LT backbones) are each a ``Grid`` value."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .plan import Plan, PlanResults, Variant, overrides_for_run
from .reports import (BEST_EPOCH_NOTE, RESULT_COLUMNS, Report, Section, paired_cells, paper_cells, paper_numbers,
                      result_cells, runs_note, seeds_note)


@dataclass(frozen=True)
class Row:
    """A table row: the run (config suffix) it is read from and the head of that run."""

    name: str
    label: str
    run: str
    head: str


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

    def studies_to_run(self, datasets: Sequence[str] | None, rhos: Sequence[int] = (), mnist_root: str | None = None,
                       command: str | None = None) -> list[Study]:
        """The studies of ``datasets``, or of every dataset whose files are found; none found is one line
        naming what to pass (to ``command``, the grid's label by default)."""
        studies = self.studies(datasets or self.available_datasets(mnist_root), rhos, mnist_root)
        if not studies:
            from ..data.arrays import DataError

            mnist = " or --mnist-root" if "mnist" in self.datasets.values() else ""
            raise DataError(f"no data found for {command or self.label}: pass --datasets (and data.root=...{mnist}), "
                            "or see `tailshift download`")
        return studies

    def data_root(self, dataset: str, mnist_root: str | None) -> tuple[str, ...]:
        """The override that points a dataset built from MNIST at ``--mnist-root`` (nothing for others)."""
        return (f"data.root={mnist_root}",) if mnist_root and self.datasets.get(dataset) == "mnist" else ()

    def available_datasets(self, mnist_root: str | None = None) -> list[str]:
        """The grid's datasets whose files can be found (each source read once)."""
        from ..data.arrays import DataError
        from ..data.sources import load_dataset

        present = {}
        for source in dict.fromkeys(self.datasets.values()):
            try:
                load_dataset(source, mnist_root if source == "mnist" else None)
                present[source] = True
            except DataError:
                present[source] = False
        return [d for d, source in self.datasets.items() if present[source]]

    def plan(self, studies: list[Study], rows: dict[str, Row], seeds, overrides: Sequence[str],
             recipe: Callable | None = None) -> Plan:
        """Each (study, row) reads its run's head; rows of one run share its jobs; ``RUN:key=value``
        overrides reach only that run. The rows ``paired`` names are compared seed by seed. ``recipe``:
        (dataset, run) -> (recipe name, its overrides); a run off the shipped configs' recipe (no overrides)
        lives in ``<folder>/<recipe>/<run>``, apart from the shipped recipe's runs."""
        runs = sorted({r.run for r in rows.values()})
        variants = {}
        for study in studies:
            for row in rows.values():
                name, changes = recipe(study.paper_path[0], row.run) if recipe else ("", ())
                folder = f"{study.folder}/{name}/{row.run}" if changes else f"{study.folder}/{row.run}"
                variants[study.name, row.name] = Variant(
                    study.name, row.run, study.config.format(run=row.run), row.head,
                    (*study.overrides, *changes, *overrides_for_run(row.run, overrides, runs)), folder)
        comparisons = tuple(((study.name, a), (study.name, b)) for study in studies
                            for a, baselines in self.paired.items() if (study.name, a) in variants
                            for b in baselines if (study.name, b) in variants)
        return Plan(variants, seeds, comparisons, self.first_runs)

    def check_data(self, plan: Plan, output: Path) -> None:
        """Fail before any run starts when the data cannot be read (``available_datasets`` has looked)."""

    # --- what came out -------------------------------------------------------------------------
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

    def sections(self, results: PlanResults, studies: list[Study], rows: dict[str, Row],
                 recipe: Callable | None = None) -> tuple[Section, ...]:
        """The table beside the paper's numbers (each row's recipe named when ``recipe`` is given), the
        seed-paired comparisons (if any) and ``appendix``."""
        paper = self.paper_rows(studies)
        table = []
        for study in studies:
            for row in rows.values():
                ref = paper[study.name].get(row.name)
                cells = result_cells(results.aggregates[study.name, row.name], ref)
                label = f"{row.label} [{recipe(study.paper_path[0], row.run)[0]} recipe]" if recipe else row.label
                table.append((study.name, label, *cells))
        sections = [Section(("Dataset", "Method", *RESULT_COLUMNS), tuple(table))]
        if results.paired:
            labels = {r.name: r.label for r in self.rows}
            sections.append(Section(
                ("Dataset", "Comparison", "Seeds", "Difference (points)", "Wins / ties / losses", "p"),
                tuple((study, f"{labels[a]} − {labels[b]}", str(pair.seeds), *paired_cells(pair))
                      for ((study, a), (_, b)), pair in results.paired.items()),
                heading="Paired by seed",
                text="All accuracy of a method minus a baseline's, seed by seed (same long-tail draw and initial "
                     "weights), over the seeds where both runs are healthy: mean ± std of the differences, the "
                     "seeds it wins / ties / loses, and the two-sided p-value of the sign-flip test of a zero mean "
                     "difference (exact up to 20 seeds, seeded Monte Carlo beyond)."))
        return (*sections, *self.appendix())

    def appendix(self) -> tuple[Section, ...]:
        """Sections after the table (the paper's rows not run here, say)."""
        return ()

    def report(self, results: PlanResults, studies: list[Study], rows: dict[str, Row], overrides: Sequence[str],
               rhos: Sequence[int] = (), recipe: Callable | None = None) -> Report:
        note = (f"Mean ± std (sample) over {seeds_note(results.plan.seeds)} of the healthy runs; diverged (non-finite "
                f"loss), collapsed (>90% of test predictions in one class) and untrained (the reported head got no loss "
                f"in any step) runs are counted and left out of the mean. {BEST_EPOCH_NOTE} "
                f"Paper: {paper_numbers()[self.name]['source']}. {runs_note(results)}"
                + (f" Each run on {results.nproc} processes (torchrun), one run after the other."
                   if results.nproc > 1 else ""))
        data = {"table": results.table(),
                "paired": {study: {f"{a} - {b}": pair for ((s, a), (_, b)), pair in results.paired.items() if s == study}
                           for study in (s.name for s in studies)},
                "runs": [r.to_json() for r in results.runs], "wall_seconds": results.wall_seconds,
                "seeds": list(results.plan.seeds), "workers": results.workers, "nproc": results.nproc,
                **({"rhos": list(rhos)} if self.sweeps_rho else {}), "overrides": list(overrides)}
        if recipe:
            data["recipes"] = {study.name: {row.name: recipe(study.paper_path[0], row.run)[0] for row in rows.values()}
                               for study in studies}
        return Report(self.name, self.title, note, self.sections(results, studies, rows, recipe), data)

    # --- the command ------------------------------------------------------------------------------
    def run(self, datasets: Sequence[str] | None, seeds, workers: int | None, output: Path, overrides: Sequence[str],
            methods: Sequence[str] | None = None, rhos: Sequence[int] = (100,), mnist_root: str | None = None,
            nproc: int = 1, recipe: Callable | None = None) -> dict:
        """Train what is missing on ``workers`` processes (None: one per core), write ``<name>.md`` / ``.json`` in
        ``output`` and return the table (study -> row -> ``Aggregate``). ``nproc`` > 1: each run on that many
        processes (torchrun), one run after the other. ``recipe``: see ``plan``."""
        rows = self.select_rows(methods)  # a bad method name is reported before any data is looked for
        studies = self.studies_to_run(datasets, rhos, mnist_root)
        plan = self.plan(studies, rows, seeds, overrides, recipe)
        self.check_data(plan, output)
        results = plan.run(output, workers, nproc)
        self.report(results, studies, rows, overrides, rhos, recipe).write(output)
        return results.table()
