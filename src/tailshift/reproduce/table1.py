"""Table 1 (and the data of Figure 4): CE / cRT / CB-RS on MNIST-family long-tail sets, x seeds."""
from __future__ import annotations

import time
from pathlib import Path

from ..data.arrays import DataError
from ..data.sources import load_dataset
from .common import (RESULT_COLUMNS, Job, aggregate, overrides_for_run, paper_numbers, pick_rows,
                     result_cells, run_jobs, runs_note, write_outputs)

#: study dataset -> the dataset it is built from
DATASETS = {"mnist-lt": "mnist", "cmnist-lt": "mnist", "fashion-lt": "fashion-mnist", "cfashion-lt": "fashion-mnist"}
#: table row -> (run config suffix, head of that run). CE comes from cRT's stage 1, which is
#: the CE run itself (same seed, same stream: a test checks the identity), saving a third of the work.
ROWS = {"ce": ("crt", "ce"), "crt": ("crt", "crt"), "cbrs": ("cbrs", "main"), "csa": ("csa", "balanced"),
        # Table 7: CSA's other two heads, from the same runs
        "csa-uniform": ("csa", "uniform"), "csa-ensemble": ("csa", "ensemble")}
DEFAULT_ROWS = ("ce", "crt", "cbrs")
ROW_NAMES = {"ce": "CE", "crt": "cRT", "cbrs": "CB-RS", "csa": "CSA", "csa-uniform": "CSA (uniform head)",
             "csa-ensemble": "CSA (ensemble)"}


def available_datasets(root: str | None) -> list[str]:
    """The study datasets whose files can be found (MNIST is not on every machine)."""
    present = {}
    for source in dict.fromkeys(DATASETS.values()):  # each source file set is read once
        try:
            load_dataset(source, root if source == "mnist" else None)
            present[source] = True
        except DataError:
            present[source] = False
    return [name for name, source in DATASETS.items() if present[source]]


def jobs_for(datasets: list[str], seeds: int, out: Path, overrides: list[str], mnist_root: str | None = None,
             rows=ROWS) -> list[Job]:
    runs = sorted({run for run, _ in rows.values()})
    root = {d: [f"data.root={mnist_root}"] if mnist_root and DATASETS[d] == "mnist" else [] for d in datasets}
    jobs = [
        Job(f"{d}/{run}/seed{s}", f"table1/{d}_{run}",
            [f"seed={s}", f"output={out / 'runs' / d / run / f'seed{s}'}", "progress=false", *root[d],
             *overrides_for_run(run, overrides, runs)])
        for d in datasets for run in runs for s in range(seeds)
    ]
    # longest first (balanced runs take ~4x the steps), so the pool finishes together
    return sorted(jobs, key=lambda j: ("cbrs" not in j.key and "csa" not in j.key, j.key))


def collect(results: list[dict], datasets: list[str], seeds: int, rows=ROWS) -> dict:
    by_key = {r["key"]: r for r in results}
    table = {}
    for d in datasets:
        table[d] = {}
        for row, (run, head) in rows.items():
            values = []
            for s in range(seeds):
                r = by_key[f"{d}/{run}/seed{s}"]
                values.append({"diverged": True} if r["diverged"] else r["heads"][head])
            table[d][row] = aggregate(values)
    return table


def markdown(table: dict, paper: dict, title: str, note: str, row_names: dict = ROW_NAMES) -> str:
    lines = [f"# {title}", "", note, "", f"| Dataset | Method | {RESULT_COLUMNS} |", "|---|---|---|---|---|---|---|---|---|"]
    for d, rows in table.items():
        for row, agg in rows.items():
            lines.append(f"| {d} | {row_names.get(row, row)} | {result_cells(agg, paper.get(d, {}).get(row))} |")
    return "\n".join(lines) + "\n"


def select_rows(methods: list[str] | None) -> dict:
    return pick_rows(methods, ROWS, DEFAULT_ROWS, "study")


def run(datasets: list[str] | None, seeds: int, workers: int, out: Path, overrides: list[str], mnist_root: str | None,
        methods: list[str] | None = None) -> dict:
    datasets = datasets or available_datasets(mnist_root)
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown study dataset {unknown[0]!r}; known: {', '.join(DATASETS)}")
    rows = select_rows(methods)
    jobs = jobs_for(datasets, seeds, out, overrides, mnist_root, rows)
    started = time.perf_counter()
    results = run_jobs(jobs, workers)
    wall = time.perf_counter() - started
    table = collect(results, datasets, seeds, rows)
    paper = paper_numbers()["table1"]
    note = (f"Mean ± std (sample) over {seeds} seeds of the healthy runs; diverged (non-finite loss) and "
            f"collapsed (>90% of test predictions in one class) runs are counted and left out of the mean. "
            f"Paper: {paper['source']}; CMNIST-LT reference = the release's printed numbers. "
            f"{runs_note(results, workers, wall)}")
    md = markdown(table, paper, "Table 1: re-sampling on MNIST-family long-tail sets", note)
    write_outputs(out, "table1", md, {"table": table, "runs": results, "wall_seconds": wall,
                                      "seeds": seeds, "workers": workers, "overrides": overrides})
    print(md)
    return table
