"""Accuracy-vs-gamma curves (Figures 1 and 9): shipped configs run with their sampler's q = 1 - gamma at each
gamma of ``GAMMAS``, planned as one ``Plan`` (curve x gamma) x seeds, written as a table and a plot."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .commands import DEFAULT_SEEDS, reproduce_command
from .plan import Plan, Variant, overrides_for_run
from .reports import Report, Section, fmt, runs_note, seeds_note
from .table1 import TABLE1, pick_datasets
from .table2 import DEFAULT_RHOS, TABLE2

GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class GammaCurve:
    """One curve of an accuracy-vs-gamma figure: a shipped config run at each gamma, its power
    sampler at q = 1 - gamma set by ``sampling(q)``, read from ``head``."""

    label: str  # the table's row and the plot's legend
    study: str
    folder: str  # runs in <output>/runs/<folder>/<run_at(gamma)>/seed<s>
    config: str
    head: str
    sampling: Callable[[float], tuple[str, ...]]
    run: str = ""  # the curve's name among the figure's runs; "RUN:key=value" overrides reach only it
    overrides: tuple[str, ...] = ()

    def run_at(self, gamma: float) -> str:
        return f"{self.run}-gamma{gamma}" if self.run else f"gamma{gamma}"


def resample_at(q: float) -> tuple[str, ...]:
    """CE on one power sampler at ``q``."""
    return "method.name=resample", f"method.params={{q: {q}}}"


def csa_balanced_at(q: float) -> tuple[str, ...]:
    """CSA whose balanced branch draws from the power sampler at ``q`` (its uniform branch stays uniform)."""
    return "method.params.balanced_stream=power", f"method.params.balanced_q={q}"


def curves_plan(curves: list[GammaCurve], seeds, overrides: Sequence[str]) -> Plan:
    """Every curve at every gamma, keyed (curve label, gamma)."""
    runs = sorted({c.run for c in curves})
    return Plan({(c.label, g): Variant(c.study, c.run_at(g), c.config, c.head,
                                       (*c.sampling(1 - g), *c.overrides, *overrides_for_run(c.run, overrides, runs)),
                                       f"{c.folder}/{c.run_at(g)}")
                 for c in curves for g in GAMMAS}, seeds)


def _cell(agg) -> str:
    """mean ± std of the healthy runs, with diverged / collapsed / untrained counts when there are any."""
    text = fmt(agg.all)
    if agg.diverged or agg.collapsed or agg.untrained:
        text += f" ({agg.diverged} diverged, {agg.collapsed} collapsed, {agg.untrained} untrained)"
    return text


def accuracy_vs_gamma(name: str, title: str, curves: list[GammaCurve], seeds, workers: int | None, output: Path,
                      overrides: Sequence[str], row_header: str, note: str, extra: dict | None = None) -> dict:
    """Train every curve at every gamma (each seed), write ``name``.png / .md / .json; the table by label and gamma."""
    from .. import plots  # matplotlib, once the runs are done

    results = curves_plan(curves, seeds, overrides).run(output, workers)
    table = results.table()
    plots.accuracy_vs_gamma({label: {"mean": [row[g].all.mean for g in GAMMAS], "std": [row[g].all.std for g in GAMMAS]}
                             for label, row in table.items()}, list(GAMMAS), output / f"{name}.png", title)
    section = Section((row_header, *(f"γ={g}" for g in GAMMAS)),
                      tuple((label, *(_cell(row[g]) for g in GAMMAS)) for label, row in table.items()))
    Report(name, title, f"{note} Mean ± std (sample) over {seeds_note(results.plan.seeds)} of the healthy runs. "
                        f"{runs_note(results)}", (section,), {
        "table": {label: {str(g): agg for g, agg in row.items()} for label, row in table.items()},
        "runs": [r.to_json() for r in results.runs], "wall_seconds": results.wall_seconds,
        "seeds": list(results.plan.seeds), "workers": results.workers, "overrides": list(overrides),
        **(extra or {})}).write(output)
    return table


@reproduce_command("figure1")
def figure1(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
            seeds: Sequence[int] = DEFAULT_SEEDS, workers: int | None = None, mnist_root: str | None = None) -> dict:
    """Figure 1: accuracy vs gamma, the sampling weight of (x, y) being n_y^-gamma (q = 1 - gamma in Eq. 2)."""
    curves = [GammaCurve(d, d, d, f"table1/{d}_ce", "main", resample_at, overrides=TABLE1.data_root(d, mnist_root))
              for d in pick_datasets(datasets, mnist_root, "figure1")]
    return accuracy_vs_gamma("figure1", "Figure 1: accuracy vs gamma", curves, seeds, workers, output, overrides,
                             "Dataset", "Power sampler, i.i.d. draws with class probability n_k^(1-gamma) / sum, "
                                        "N draws per epoch; LeNet, the Table 1 CE config.")


@reproduce_command("figure9")
def figure9(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
            rhos: Sequence[int] = DEFAULT_RHOS, seeds: Sequence[int] = DEFAULT_SEEDS, workers: int | None = None) -> dict:
    """Figure 9: re-sampling vs CSA across balance ratios, on the Table 2 configs (ResNet-32, 200 epochs)."""
    curves = []
    for study in TABLE2.studies_to_run(datasets, rhos, command="figure9"):
        curves += [GammaCurve(f"{study.name}: CE re-sampling", study.name, study.folder, study.config.format(run="ce"),
                              "main", resample_at, "resample", study.overrides),
                   GammaCurve(f"{study.name}: CSA", study.name, study.folder, study.config.format(run="csa"),
                              "balanced", csa_balanced_at, "csa", study.overrides)]
    return accuracy_vs_gamma(
        "figure9", "Figure 9: re-sampling vs CSA across balance ratios gamma", curves, seeds, workers, output,
        overrides, "Study: method",
        "Sampling weight n_y^-gamma (power sampler, q = 1 - gamma, i.i.d. draws, N per epoch): CE's one stream, CSA's "
        "balanced branch (read from its balanced head; its uniform branch stays uniform). The paper shows Figure 9 "
        "as a plot without printed numbers, and its text does not name the gammas (this grid is Figure 1's) nor the "
        "dataset (App. D's other studies are CIFAR-100-LT, rho 100).", extra={"rhos": list(rhos)})
