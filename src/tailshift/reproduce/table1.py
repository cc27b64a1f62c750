"""Table 1 (and the data of Figure 4): CE / cRT / CB-RS (and CSA) on MNIST-family long-tail sets, x seeds."""
from __future__ import annotations

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
