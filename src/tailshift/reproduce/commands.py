"""The ``tailshift reproduce`` commands by name: each paper table or figure is one registered
function of a ``Request`` (the command line's options, typed)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry
from . import ablations, figures
from .common import default_workers
from .grid import Grid
from .table1 import TABLE1
from .table2 import GRIDS
from .table3 import TABLE3

COMMANDS: Registry = Registry("reproduce command")


@dataclass
class Request:
    """What a reproduce command may use; each uses the options that concern it."""

    out: Path
    workers: int | None  # None: the command's default
    seeds: list[int]
    overrides: list[str]
    datasets: list[str] | None = None
    methods: list[str] | None = None
    rhos: tuple[int, ...] = (100,)
    mnist_root: str | None = None
    study: str = "cifar100-lt"
    tables: list[str] | None = None
    models: list[str] | None = None
    nproc: int = 1


def _grid_command(grid: Grid):
    def command(r: Request):
        return grid.run(r.datasets, r.seeds, r.workers or default_workers(), r.out, r.overrides, r.methods, r.rhos,
                        r.mnist_root)

    command.__doc__ = grid.title
    return command


def _figure_command(figure, options: tuple[str, ...] = ()):
    """``options``: the Request fields beyond the common ones that the figure takes (the CIFAR figures' rhos)."""
    def command(r: Request):
        return figure(datasets=r.datasets, seeds=r.seeds, workers=r.workers or default_workers(), out=r.out, overrides=r.overrides,
                      mnist_root=r.mnist_root, methods=r.methods, **{name: getattr(r, name) for name in options})

    command.__doc__ = figure.__doc__
    return command


for _grid in (TABLE1, *GRIDS.values()):
    COMMANDS.register(_grid.name)(_grid_command(_grid))
COMMANDS.register("ablations")(
    lambda r: ablations.run(r.study, r.tables, r.seeds, r.workers or default_workers(), r.out, r.overrides,
                            r.mnist_root))
# each Table 3 run takes the machine (or, with nproc, its GPUs): one worker unless asked
COMMANDS.register("table3")(
    lambda r: TABLE3.run(r.models, r.seeds, r.workers or 1, r.out, r.overrides, r.methods, nproc=r.nproc))
for _figure in (figures.figure1, figures.figure2, figures.figure3, figures.figure4, figures.figure7):
    COMMANDS.register(_figure.__name__)(_figure_command(_figure))
for _figure in (figures.figure9, figures.figure10, figures.figure11):
    COMMANDS.register(_figure.__name__)(_figure_command(_figure, ("rhos",)))
