"""CSA's ablations (paper App. D: Tables 4, 5, 6, 8 and Figure 8), each one switch of one study's CSA config.

The paper ran them on CIFAR-100-LT at rho 100 (ResNet-32, 200 epochs: a GPU job);
the LeNet studies (``fashion-lt``, ``cfashion-lt``) run the same switches in CPU
minutes. A variant is the study's shipped CSA config plus ``method.params``
overrides; variants that resolve to the same config (e.g. Table 5's delta = 0.8
and the shipped config) share one run, so each table's default row is the same
runs everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .commands import DEFAULT_SEEDS, reproduce_command
from .plan import Plan, Variant, overrides_for_run
from .reports import BEST_EPOCH_NOTE, RESULT_COLUMNS, Report, Section, paper_numbers, result_cells, runs_note, seeds_note
from .table1 import TABLE1

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
    """One ablation table: its rows, each a set of switches of the study's CSA config."""

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


def select_tables(names: Sequence[str] | None, study: str) -> dict[str, Ablation]:
    """The requested ablations (default: all that the study's backbone allows)."""
    from ..config import config_path, load_config
    from ..models import create_model

    unknown = sorted(set(names or ()) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation {unknown[0]!r}; known: {', '.join(ABLATIONS)}")
    pooled = create_model(load_config(config_path(STUDIES[study])).model.name).pooled_linear
    chosen = {n: a for n, a in ABLATIONS.items() if names is None or n in names}
    blocked = [n for n, a in chosen.items() if a.needs_pooled_linear and not pooled]
    if names is not None and blocked:
        raise ValueError(f"ablation {blocked[0]} needs classic CAM, which needs a global-average-pooling backbone; "
                         f"study {study!r} has none (use cifar10-lt or cifar100-lt)")
    return {n: a for n, a in chosen.items() if n not in blocked}


def plan(study: str, tables: dict[str, Ablation], seeds, overrides: Sequence[str],
         mnist_root: str | None = None) -> Plan:
    """One variant per table row, keyed (table, row label), all read from the ``HEAD``.

    Rows are matched to runs by config fingerprint, so a row that changes nothing (the run "base")
    or the same thing as another row reuses that run, named after the first row's switches.
    """
    from ..config import config_path, load_config
    from ..resolve import resolve_run  # imports the methods (torch): not while the command line is built

    config = STUDIES[study]
    user = (*TABLE1.data_root(study, mnist_root), *overrides_for_run("csa", overrides, ["csa"]))

    def fingerprint(variant: Variant) -> str:
        return resolve_run(load_config(config_path(config), list(variant.overrides))).fingerprint()

    base = Variant(study, "base", config, HEAD, user)
    runs = {fingerprint(base): base}  # fingerprint -> the variant whose run it is
    variants = {}
    for name, ablation in tables.items():
        for label, params in ablation.rows.items():
            variant = Variant(study, _slug(params), config, HEAD, (*_params_overrides(params), *user))
            variants[name, label] = runs.setdefault(fingerprint(variant), variant)
    return Plan(variants, seeds)


@reproduce_command("ablations")
def run(output: Path, overrides: Sequence[str] = (), study: str = PAPER_STUDY, tables: Sequence[str] | None = None,
        seeds: Sequence[int] = DEFAULT_SEEDS, workers: int | None = None, mnist_root: str | None = None) -> dict:
    """CSA's ablations (paper App. D: Tables 4, 5, 6, 8, Figure 8): one switch of the study's CSA config per row."""
    if study not in STUDIES:
        raise ValueError(f"unknown ablation study {study!r}; known: {', '.join(STUDIES)}")
    chosen = select_tables(tables, study)
    results = plan(study, chosen, seeds, overrides, mnist_root).run(output, workers)
    paper = paper_numbers()["ablations"]
    table = results.table()
    note = (f"Study {study}: the shipped config `{STUDIES[study]}` with one switch per row, {HEAD} head, "
            f"mean ± std (sample) over {seeds_note(results.plan.seeds)} of the healthy runs; diverged, collapsed and "
            f"untrained (the head got no loss in any step) runs are counted and left out. Rows that resolve to the "
            f"same config share its runs. {BEST_EPOCH_NOTE} Paper: {paper['source']}. {runs_note(results)}")
    if study != PAPER_STUDY:
        note += f" The paper's figures are for {PAPER_STUDY}, not this study: compare trends across rows, not values."
    sections = tuple(Section(("Variant", *RESULT_COLUMNS),
                             tuple((label, *result_cells(agg, paper.get(name, {}).get(label)))
                                   for label, agg in table[name].items()),
                             heading=ablation.title)
                     for name, ablation in chosen.items())
    rows = {name: {label: variant.run for (t, label), variant in results.plan.variants.items() if t == name}
            for name in chosen}
    Report("ablations", "CSA ablations (paper App. D)", note, sections, {
        "study": study, "table": table, "rows": rows, "runs": [r.to_json() for r in results.runs],
        "wall_seconds": results.wall_seconds, "seeds": list(results.plan.seeds), "workers": results.workers,
        "overrides": list(overrides)}).write(output)
    return table
