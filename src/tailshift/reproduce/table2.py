"""Table 2 (with Table 7's heads) and Table 10: CIFAR-LT, ResNet-32, 200 epochs, per imbalance ratio.

Each row is one shipped config ``<table>/<dataset>_<run>`` and one head of that run;
the imbalance ratio is an override, so one config serves rho 100, 50 and 10.
These runs need a GPU to finish in hours rather than days.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..data.arrays import DataError
from ..data.sources import load_dataset
from . import table1
from .common import (Job, overrides_for_run, paper_numbers, pick_rows, run_jobs, runs_note, seed_list, seeds_note,
                     write_outputs)

DATASETS = {"cifar10-lt": "cifar10", "cifar100-lt": "cifar100"}
#: table row -> (run config suffix, head of that run). CE is stage 1 of the cRT run.
ROWS = {"ce": ("crt", "ce"), "crt": ("crt", "crt"), "cbrs": ("cbrs", "main"), "la": ("la", "main"),
        "dual": ("dual", "balanced"), "csa": ("csa", "balanced"),
        "csa-uniform": ("csa", "uniform"), "csa-ensemble": ("csa", "ensemble"),
        "csa-mixup": ("csa-mixup", "balanced")}
ROW_NAMES = {"ce": "CE", "crt": "cRT", "cbrs": "CB-RS", "la": "LA", "dual": "dual branch", "csa": "CSA",
             "csa-uniform": "CSA (uniform head)", "csa-ensemble": "CSA (ensemble)", "csa-mixup": "CSA + mixup"}
#: runs that take about twice the time of a single-branch run: started first so the pool ends together
DUAL_RUNS = ("csa", "csa-mixup", "dual")


@dataclass(frozen=True)
class Grid:
    """A paper table over CIFAR-LT configs: the config folder, its rows (row -> (run, head)) and datasets."""

    name: str
    label: str
    subject: str
    rows: dict
    row_names: dict
    datasets: tuple
    paired: dict  # method row -> baseline rows it is compared with seed by seed
    default_rows: tuple | None = None  # rows run when --methods is not given; None: every row

    @property
    def title(self) -> str:
        return f"{self.label}: {self.subject}"


TABLE2 = Grid("table2", "Table 2", "CIFAR-LT, ResNet-32", ROWS, ROW_NAMES, tuple(DATASETS),
              {"csa": ("ce", "crt", "cbrs", "la", "dual")})
#: Table 10 as released: CSA's balanced branch re-sampled (CB-RS, the default CSA), drawn uniformly
#: with the logit-adjusted loss on the uniform head (LA), or re-sampled with that loss (both); the
#: balanced branch's loss is always CE. The "balanced head" rows put LA on the balanced head instead
#: (this project's earlier reading; run with --methods). CIFAR-100-LT only, as in the paper.
TABLE10 = Grid("table10", "Table 10", "CSA with logit adjustment, CIFAR-100-LT, ResNet-32",
               {"csa-cbrs": ("csa-cbrs", "balanced"), "csa-la": ("csa-la", "balanced"),
                "csa-both": ("csa-both", "balanced"),
                "csa-la-balanced-head": ("csa-la-balanced-head", "balanced"),
                "csa-both-balanced-head": ("csa-both-balanced-head", "balanced")},
               {"csa-cbrs": "CSA w/ CB-RS", "csa-la": "CSA w/ LA", "csa-both": "CSA w/ both",
                "csa-la-balanced-head": "CSA w/ LA on the balanced head (not the release's)",
                "csa-both-balanced-head": "CSA w/ both, LA on the balanced head (not the release's)"},
               ("cifar100-lt",),
               {"csa-la": ("csa-cbrs",), "csa-both": ("csa-cbrs",), "csa-la-balanced-head": ("csa-la",),
                "csa-both-balanced-head": ("csa-both",)},
               ("csa-cbrs", "csa-la", "csa-both"))
GRIDS = {grid.name: grid for grid in (TABLE2, TABLE10)}


def study_name(dataset: str, rho: int) -> str:
    return f"{dataset} rho {rho}"


def available_datasets(grid: Grid = TABLE2) -> list[str]:
    found = []
    for name in grid.datasets:
        source = DATASETS[name]
        try:
            load_dataset(source)
            found.append(name)
        except DataError:
            pass
    return found


def jobs_for(datasets: list[str], rhos: list[int], seeds: int | list[int], out: Path, overrides: list[str], rows: dict,
             grid: Grid = TABLE2) -> list[Job]:
    runs = sorted({run for run, _ in rows.values()})
    jobs = [
        Job(f"{study_name(d, rho)}/{run}/seed{s}", f"{grid.name}/{d}_{run}",
            [f"data.longtail.rho={rho}", f"seed={s}", f"output={out / 'runs' / f'{d}-rho{rho}' / run / f'seed{s}'}",
             "progress=false", *overrides_for_run(run, overrides, runs)])
        for d in datasets for rho in rhos for run in runs for s in seed_list(seeds)
    ]
    return sorted(jobs, key=lambda j: (j.key.split("/")[1] not in DUAL_RUNS, j.key))


def paper_rows(rhos: list[int], grid: Grid = TABLE2) -> dict:
    """The paper's figures in Table 1's shape: {study: {row: [All, Many, Med, Few]}}
    (Table 2 gives All only; Table 7's heads fill in CSA's groups on CIFAR-100-LT at rho 100)."""
    numbers = paper_numbers()
    out = {}
    for d, by_rho in numbers[grid.name].items():
        if d == "source":
            continue
        for rho in rhos:
            out[study_name(d, rho)] = {row: value if isinstance(value, list) else [value, None, None, None]
                                       for row, value in by_rho.get(rho, {}).items()}
    t7 = study_name("cifar100-lt", 100)
    if grid is TABLE2 and t7 in out:
        out[t7].update({"csa": numbers["table7"]["balanced"], "csa-uniform": numbers["table7"]["uniform"],
                        "csa-ensemble": numbers["table7"]["ensemble"]})
    return out


def select_rows(methods: list[str] | None, grid: Grid = TABLE2) -> dict:
    return pick_rows(methods, grid.rows, grid.default_rows or grid.rows, grid.label)


def run(datasets: list[str] | None, rhos: list[int], seeds: int | list[int], workers: int, out: Path, overrides: list[str],
        methods: list[str] | None = None, grid: Grid = TABLE2) -> dict:
    rows = select_rows(methods, grid)  # a bad method name is reported before any data is looked for
    datasets = datasets or available_datasets(grid)
    unknown = sorted(set(datasets) - set(grid.datasets))
    if unknown:
        raise ValueError(f"unknown {grid.label} dataset {unknown[0]!r}; known: {', '.join(grid.datasets)}")
    if not datasets:
        raise DataError("no CIFAR data found: pass --datasets and data.root=..., or see `tailshift download`")
    jobs = jobs_for(datasets, rhos, seeds, out, overrides, rows, grid)
    started = time.perf_counter()
    results = run_jobs(jobs, workers)
    wall = time.perf_counter() - started
    studies = [study_name(d, rho) for d in datasets for rho in rhos]
    table = table1.collect(results, studies, seeds, rows)
    paper = paper_numbers()[grid.name]
    note = (f"Mean ± std (sample) over {seeds_note(seeds)} of the healthy runs; diverged and collapsed runs are counted "
            f"and left out. Paper: {paper['source']}. {runs_note(results, workers, wall)}")
    pairs = table1.paired(results, studies, seeds, rows, grid.paired)
    md = table1.markdown(table, paper_rows(rhos, grid), grid.title, note, grid.row_names, pairs)
    write_outputs(out, grid.name, md, {"table": table, "paired": pairs, "runs": results, "wall_seconds": wall,
                                       "seeds": seed_list(seeds), "rhos": rhos, "workers": workers,
                                       "overrides": overrides})
    print(md)
    return table
