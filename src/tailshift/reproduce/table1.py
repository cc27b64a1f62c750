"""Table 1 and Figure 4: CE / cRT / CB-RS (and CSA) on MNIST-family long-tail sets, x seeds."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .commands import DEFAULT_SEEDS, reproduce_command
from .grid import Grid, Row

#: CE comes from cRT's stage 1, which is the CE run itself (same seed, same stream: a test checks
#: the identity), saving a third of the work. CSA's other two heads are Table 7's, from the same runs.
TABLE1 = Grid(
    "table1", "Table 1", "re-sampling on MNIST-family long-tail sets", "table1",
    (Row("ce", "CE", "crt", "ce"), Row("crt", "cRT", "crt", "crt"), Row("cbrs", "CB-RS", "cbrs", "main"),
     Row("csa", "CSA", "csa", "balanced"), Row("csa-uniform", "CSA (uniform head)", "csa", "uniform"),
     Row("csa-ensemble", "CSA (ensemble)", "csa", "ensemble")),
    {"mnist-lt": "mnist", "cmnist-lt": "mnist", "fashion-lt": "fashion-mnist", "cfashion-lt": "fashion-mnist"},
    # CSA against each baseline, and CB-RS against CE and cRT (the paper's claim on the coloured set: CB-RS below both)
    paired={"csa": ("ce", "crt", "cbrs"), "cbrs": ("ce", "crt")},
    default_rows=("ce", "crt", "cbrs"),
    sweeps_rho=False,
    first_runs=("cbrs", "csa"),  # balanced runs take ~4x the steps
)
#: Figure 4's bars, from Table 1's rows
FIGURE4_BARS = ("ce", "crt", "cbrs", "csa")


def pick_datasets(datasets: Sequence[str] | None, mnist_root: str | None, command: str,
                  coloured: bool | None = None) -> list[str]:
    """``datasets``, or every Table 1 set whose files are found; with ``coloured``, only the coloured (True) or
    the grey (False) ones. None to pick is one line naming what to pass to ``command``."""
    found = [s.name for s in TABLE1.studies_to_run(datasets, mnist_root=mnist_root, command=command)]
    if coloured is not None:
        found = [d for d in found if d.startswith("c") == coloured]
        if not found:
            kind = "coloured dataset (cfashion-lt or cmnist-lt)" if coloured else "grey dataset (fashion-lt or mnist-lt)"
            raise ValueError(f"{command} needs a {kind}, got {', '.join(datasets)}")
    return found


@reproduce_command(TABLE1.name)
def table1(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
           methods: Sequence[str] | None = None, seeds: Sequence[int] = DEFAULT_SEEDS, workers: int | None = None,
           mnist_root: str | None = None) -> dict:
    """Table 1: CE / cRT / CB-RS (/ CSA) on MNIST-LT, CMNIST-LT, Fashion-LT, CFashion-LT."""
    return TABLE1.run(datasets, seeds, workers, output, overrides, methods, mnist_root=mnist_root)


@reproduce_command("figure4")
def figure4(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
            methods: Sequence[str] | None = None, seeds: Sequence[int] = DEFAULT_SEEDS, workers: int | None = None,
            mnist_root: str | None = None) -> dict:
    """Figure 4: grey vs coloured twin, CE / cRT / CB-RS / CSA bars from the Table 1 grid (written beside)."""
    from .. import plots  # matplotlib, once the runs are done

    found = pick_datasets(datasets, mnist_root, "figure4")
    table = TABLE1.run(found, seeds, workers, output, overrides, methods or [r.name for r in TABLE1.rows],
                       mnist_root=mnist_root)
    labels = {r.name: r.label for r in TABLE1.rows}
    values = {d: {labels[row]: (float("nan") if agg.all.mean is None else agg.all.mean, agg.all.std or 0.0)
                  for row, agg in rows.items() if row in FIGURE4_BARS} for d, rows in table.items()}
    plots.grouped_bars(values, output / "figure4.png", "Grey vs coloured context (Figure 4)")
    return table
