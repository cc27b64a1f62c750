"""CSA's ablations (paper App. D: Tables 4, 5, 6, 8 and Figure 8), each one switch of one study's CSA config.

The paper ran them on CIFAR-100-LT at rho 100 (ResNet-32, 200 epochs: a GPU job);
the LeNet studies (``fashion-lt``, ``cfashion-lt``) run the same switches in CPU
minutes. A variant is the study's shipped CSA config plus ``method.params``
overrides; variants that resolve to the same config (e.g. Table 5's delta = 0.8
and the shipped config) share one run, so each table's default row is the same
runs everywhere.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..models import create_model
from ..resolve import resolve_run
from . import table1
from .common import (RESULT_COLUMNS, Job, aggregate, by_job, head_result, overrides_for_run, paper_numbers,
                     resolve_config, result_cells, run_jobs, runs_note, seed_list, seeds_note, write_outputs)

#: study -> its shipped CSA config (the paper's ablations use cifar100-lt)
STUDIES = {"cifar100-lt": "table2/cifar100-lt_csa", "cifar10-lt": "table2/cifar10-lt_csa",
           "fashion-lt": "table1/fashion-lt_csa", "cfashion-lt": "table1/cfashion-lt_csa",
           "mnist-lt": "table1/mnist-lt_csa", "cmnist-lt": "table1/cmnist-lt_csa"}
#: the paper's CSA head, used for every row
HEAD = "balanced"
#: the study the paper's ablation figures come from
PAPER_STUDY = "cifar100-lt"


@dataclass(frozen=True)
class Ablation:
    title: str
    #: row label -> method.params changed from the study's CSA config ({} = the config itself)
    rows: dict[str, dict]
    #: the backbone must have a global-average-pooling embed (classic CAM)
    needs_pooled_linear: bool = False


ABLATIONS = {
    "table4": Ablation("Table 4: the context bank Q", {"with Q": {}, "w/o Q": {"use_bank": False}}),
    "table5": Ablation("Table 5: the confidence threshold delta",
                       {f"delta = {d / 10:g}": {"delta": d / 10} for d in range(10)}),
    "table6": Ablation("Table 6: the bank volume V (x batch size)",
                       {f"V = {v} B": {"bank_multiple": v} for v in (1, 2, 4, 8, 16, 32, 64)}),
    "table8": Ablation("Table 8: CAM vs Grad-CAM", {"CAM": {"cam": "cam"}, "Grad-CAM": {"cam": "gradcam"}},
                       needs_pooled_linear=True),
    "figure8": Ablation("Figure 8: the distribution of lambda", {
        "U(0, 1)": {"lam_distribution": "uniform", "lam_a": 0.0, "lam_b": 1.0},
        "U(0, 0.5)": {"lam_distribution": "uniform", "lam_a": 0.0, "lam_b": 0.5},
        "U(0.5, 1)": {"lam_distribution": "uniform", "lam_a": 0.5, "lam_b": 1.0},
        "lambda = 1": {"lam_distribution": "uniform", "lam_a": 1.0, "lam_b": 1.0},
        "Beta(0.5, 0.5)": {"lam_distribution": "beta", "lam_a": 0.5, "lam_b": 0.5},
        "Beta(1, 1)": {"lam_distribution": "beta", "lam_a": 1.0, "lam_b": 1.0},
        "Beta(2, 2)": {"lam_distribution": "beta", "lam_a": 2.0, "lam_b": 2.0},
    }),
}


def _params_overrides(params: dict) -> list[str]:
    return [f"method.params.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items()]


def _slug(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items()) or "base"


def select_tables(names: list[str] | None, study: str) -> dict[str, Ablation]:
    """The requested ablations (default: all that the study's backbone allows)."""
    unknown = sorted(set(names or ()) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation {unknown[0]!r}; known: {', '.join(ABLATIONS)}")
    pooled = create_model(resolve_config(STUDIES[study]).model.name).pooled_linear
    chosen = {n: a for n, a in ABLATIONS.items() if names is None or n in names}
    blocked = [n for n, a in chosen.items() if a.needs_pooled_linear and not pooled]
    if names is not None and blocked:
        raise ValueError(f"ablation {blocked[0]} needs classic CAM, which needs a global-average-pooling backbone; "
                         f"study {study!r} has none (use cifar10-lt or cifar100-lt)")
    return {n: a for n, a in chosen.items() if n not in blocked}


def plan(study: str, tables: dict[str, Ablation], seeds: int | list[int], out: Path, overrides: list[str],
         mnist_root: str | None = None):
    """Jobs (one per distinct config and seed) and, per table row, the run folder it reads.

    Rows are matched to runs by config fingerprint, so a row that changes nothing
    (or the same thing as another row) reuses that run.
    """
    config = STUDIES[study]
    root = [*table1.TABLE1.data_root(study, mnist_root)]
    user = [*root, *overrides_for_run("csa", overrides, ["csa"])]
    runs: dict[str, str] = {}  # fingerprint -> run folder name
    variants: list[tuple[str, list[str]]] = []
    rows: dict[str, dict[str, str]] = {}
    for name, ablation in {"base": Ablation("", {"base": {}}), **tables}.items():
        rows[name] = {}
        for label, params in ablation.rows.items():
            extra = [*_params_overrides(params), *user]
            fingerprint = resolve_run(resolve_config(config, extra)).fingerprint()
            if fingerprint not in runs:
                runs[fingerprint] = _slug(params)
                variants.append((runs[fingerprint], extra))
            rows[name][label] = runs[fingerprint]
    del rows["base"]
    jobs = [Job(study, slug, s, config,
                (*extra, f"seed={s}", f"output={out / 'runs' / study / slug / f'seed{s}'}", "progress=false"))
            for slug, extra in variants for s in seed_list(seeds)]
    return jobs, rows


def markdown(table: dict, tables: dict[str, Ablation], paper: dict, title: str, note: str) -> str:
    lines = [f"# {title}", "", note]
    for name, ablation in tables.items():
        ref = paper.get(name, {})
        lines += ["", f"## {ablation.title}", "", f"| Variant | {RESULT_COLUMNS} |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {label} | {result_cells(agg, ref.get(label))} |" for label, agg in table[name].items()]
    return "\n".join(lines) + "\n"


def run(study: str, tables: list[str] | None, seeds: int | list[int], workers: int, out: Path, overrides: list[str],
        mnist_root: str | None = None) -> dict:
    if study not in STUDIES:
        raise ValueError(f"unknown ablation study {study!r}; known: {', '.join(STUDIES)}")
    chosen = select_tables(tables, study)
    jobs, rows = plan(study, chosen, seeds, out, overrides, mnist_root)
    started = time.perf_counter()
    results = run_jobs(jobs, workers)
    wall = time.perf_counter() - started
    found = by_job(results)
    table = {name: {label: aggregate([head_result(found[(study, slug, s)], HEAD) for s in seed_list(seeds)])
                    for label, slug in by_row.items()}
             for name, by_row in rows.items()}
    paper = paper_numbers()["ablations"]
    note = (f"Study {study}: the shipped config `{STUDIES[study]}` with one switch per row, {HEAD} head, "
            f"mean ± std (sample) over {seeds_note(seeds)} of the healthy runs; diverged, collapsed and untrained "
            f"(the head got no loss in any step) runs are counted and left out. Rows that resolve to the same config "
            f"share its runs. Paper: {paper['source']}. {runs_note(results, workers, wall)}")
    if study != PAPER_STUDY:
        note += f" The paper's figures are for {PAPER_STUDY}, not this study: compare trends across rows, not values."
    md = markdown(table, chosen, paper, "CSA ablations (paper App. D)", note)
    write_outputs(out, "ablations", md, {"study": study, "table": table, "rows": rows, "runs": results,
                                         "wall_seconds": wall, "seeds": seed_list(seeds), "workers": workers,
                                         "overrides": overrides})
    print(md)
    return table
