"""Table 1 (and the data of Figure 4): CE / cRT / CB-RS on MNIST-family long-tail sets, x seeds."""
from __future__ import annotations

import time
from pathlib import Path

from ..data.arrays import DataError
from ..data.sources import load_dataset
from .common import (RESULT_COLUMNS, Job, aggregate, fmt_paired, overrides_for_run, paired_difference, paper_numbers,
                     pick_rows, result_cells, run_jobs, runs_note, seed_list, seeds_note, write_outputs)

#: study dataset -> the dataset it is built from
DATASETS = {"mnist-lt": "mnist", "cmnist-lt": "mnist", "fashion-lt": "fashion-mnist", "cfashion-lt": "fashion-mnist"}
#: table row -> (run config suffix, head of that run). CE comes from cRT's stage 1, which is
#: the CE run itself (same seed, same stream: a test checks the identity), saving a third of the work.
ROWS = {"ce": ("crt", "ce"), "crt": ("crt", "crt"), "cbrs": ("cbrs", "main"), "csa": ("csa", "balanced"),
        # Table 7: CSA's other two heads, from the same runs
        "csa-uniform": ("csa", "uniform"), "csa-ensemble": ("csa", "ensemble")}
DEFAULT_ROWS = ("ce", "crt", "cbrs")
#: rows compared seed by seed with other rows (when both are in the table): CSA with each
#: baseline, and CB-RS with CE and cRT (the paper's claim on the coloured set: CB-RS below both)
PAIRED = {"csa": ("ce", "crt", "cbrs"), "cbrs": ("ce", "crt")}
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


def jobs_for(datasets: list[str], seeds: int | list[int], out: Path, overrides: list[str], mnist_root: str | None = None,
             rows=ROWS) -> list[Job]:
    runs = sorted({run for run, _ in rows.values()})
    root = {d: [f"data.root={mnist_root}"] if mnist_root and DATASETS[d] == "mnist" else [] for d in datasets}
    jobs = [
        Job(f"{d}/{run}/seed{s}", f"table1/{d}_{run}",
            [f"seed={s}", f"output={out / 'runs' / d / run / f'seed{s}'}", "progress=false", *root[d],
             *overrides_for_run(run, overrides, runs)])
        for d in datasets for run in runs for s in seed_list(seeds)
    ]
    # longest first (balanced runs take ~4x the steps), so the pool finishes together
    return sorted(jobs, key=lambda j: ("cbrs" not in j.key and "csa" not in j.key, j.key))


def row_values(results: list[dict], datasets: list[str], seeds: int | list[int], rows=ROWS) -> dict:
    """dataset -> row -> one result per seed, in seed order ({"diverged": True} for a diverged run)."""
    by_key = {r["key"]: r for r in results}
    values = {}
    for d in datasets:
        values[d] = {}
        for row, (run, head) in rows.items():
            runs = [by_key[f"{d}/{run}/seed{s}"] for s in seed_list(seeds)]
            values[d][row] = [{"diverged": True} if r["diverged"] else r["heads"][head] for r in runs]
    return values


def collect(results: list[dict], datasets: list[str], seeds: int | list[int], rows=ROWS) -> dict:
    return {d: {row: aggregate(v) for row, v in by_row.items()}
            for d, by_row in row_values(results, datasets, seeds, rows).items()}


def paired(results: list[dict], datasets: list[str], seeds: int | list[int], rows=ROWS, compare: dict = PAIRED) -> dict:
    """dataset -> "method - baseline" -> ``paired_difference`` of All, for the ``compare`` rows present
    (method row -> its baseline rows)."""
    values = row_values(results, datasets, seeds, rows)
    return {d: {f"{a} - {b}": paired_difference(by_row[a], by_row[b])
                for a, baselines in compare.items() if a in by_row for b in baselines if b in by_row}
            for d, by_row in values.items()}


def markdown(table: dict, paper: dict, title: str, note: str, row_names: dict = ROW_NAMES, pairs: dict | None = None) -> str:
    lines = [f"# {title}", "", note, "", f"| Dataset | Method | {RESULT_COLUMNS} |", "|---|---|---|---|---|---|---|---|---|"]
    for d, rows in table.items():
        for row, agg in rows.items():
            lines.append(f"| {d} | {row_names.get(row, row)} | {result_cells(agg, paper.get(d, {}).get(row))} |")
    if pairs and any(pairs.values()):
        lines += ["", "## Paired by seed", "",
                  "All accuracy of a method minus a baseline's, seed by seed (same long-tail draw and initial "
                  "weights), over the seeds where both runs are healthy: mean ± std of the differences, the "
                  "seeds it wins / ties / loses, and the two-sided p-value of the sign-flip test of a zero mean "
                  "difference (exact up to 20 seeds, seeded Monte Carlo beyond).", "",
                  "| Dataset | Comparison | Seeds | Difference (points) | Wins / ties / losses | p |", "|---|---|---|---|---|---|"]
        for d, comparisons in pairs.items():
            for name, pair in comparisons.items():
                a, b = name.split(" - ")
                lines.append(f"| {d} | {row_names.get(a, a)} − {row_names.get(b, b)} | {pair['seeds']} | {fmt_paired(pair)} |")
    return "\n".join(lines) + "\n"


def select_rows(methods: list[str] | None) -> dict:
    return pick_rows(methods, ROWS, DEFAULT_ROWS, "study")


def run(datasets: list[str] | None, seeds: int | list[int], workers: int, out: Path, overrides: list[str], mnist_root: str | None,
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
    note = (f"Mean ± std (sample) over {seeds_note(seeds)} of the healthy runs; diverged (non-finite loss) and "
            f"collapsed (>90% of test predictions in one class) runs are counted and left out of the mean. "
            f"Paper: {paper['source']}; CMNIST-LT reference = the release's printed numbers. "
            f"{runs_note(results, workers, wall)}")
    pairs = paired(results, datasets, seeds, rows)
    md = markdown(table, paper, "Table 1: re-sampling on MNIST-family long-tail sets", note, pairs=pairs)
    write_outputs(out, "table1", md, {"table": table, "paired": pairs, "runs": results, "wall_seconds": wall,
                                      "seeds": seed_list(seeds), "workers": workers, "overrides": overrides})
    print(md)
    return table
