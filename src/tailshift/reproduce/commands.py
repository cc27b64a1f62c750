"""The ``tailshift reproduce`` commands by name: each paper table or figure is one registered
function of a ``Request`` (the command line's options, typed).

This module is imported to build the command line's parser, so it names the commands without
importing them: each command imports its table or figure (and with it torch, matplotlib and the
engine) only when it runs. ``tests/test_cli.py`` checks these names against the tables and figures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry

COMMANDS: Registry = Registry("reproduce command")

#: the ``Grid`` tables by name (table1.TABLE1 and table2.GRIDS)
GRID_NAMES = ("table1", "table2", "table10", "table11")
#: the figure functions of ``figures`` by name; the CIFAR ones also take ``--rhos``
FIGURE_NAMES = ("figure1", "figure2", "figure3", "figure4", "figure7")
CIFAR_FIGURE_NAMES = ("figure9", "figure10", "figure11")


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


def _workers(r: Request) -> int:
    from .common import default_workers

    return r.workers or default_workers()


def _grid(name: str):
    from .table1 import TABLE1
    from .table2 import GRIDS

    return {TABLE1.name: TABLE1, **GRIDS}[name]


def _grid_command(name: str):
    def command(r: Request):
        return _grid(name).run(r.datasets, r.seeds, _workers(r), r.out, r.overrides, r.methods, r.rhos, r.mnist_root)

    command.__doc__ = f"Reproduce {name} (a ``Grid``)."
    return command


def _figure_command(name: str, options: tuple[str, ...] = ()):
    """``options``: the Request fields beyond the common ones that the figure takes (the CIFAR figures' rhos)."""
    def command(r: Request):
        from . import figures

        return getattr(figures, name)(datasets=r.datasets, seeds=r.seeds, workers=_workers(r), out=r.out,
                                      overrides=r.overrides, mnist_root=r.mnist_root, methods=r.methods,
                                      **{option: getattr(r, option) for option in options})

    command.__doc__ = f"Reproduce {name} (``figures.{name}``)."
    return command


def _ablations(r: Request):
    from . import ablations

    return ablations.run(r.study, r.tables, r.seeds, _workers(r), r.out, r.overrides, r.mnist_root)


def _table3(r: Request):
    from .table3 import TABLE3

    # each Table 3 run takes the machine (or, with nproc, its GPUs): one worker unless asked
    return TABLE3.run(r.models, r.seeds, r.workers or 1, r.out, r.overrides, r.methods, nproc=r.nproc)


for _name in GRID_NAMES:
    COMMANDS.register(_name)(_grid_command(_name))
COMMANDS.register("ablations")(_ablations)
COMMANDS.register("table3")(_table3)
for _name in FIGURE_NAMES:
    COMMANDS.register(_name)(_figure_command(_name))
for _name in CIFAR_FIGURE_NAMES:
    COMMANDS.register(_name)(_figure_command(_name, ("rhos",)))
