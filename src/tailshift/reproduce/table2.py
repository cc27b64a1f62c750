"""Table 2 (with Table 7's heads), Table 10 and Table 11: CIFAR-LT, ResNet-32, 200 epochs, per imbalance ratio.

Each row is one shipped config ``<table>/<dataset>_<run>`` and one head of that run; the
imbalance ratio is an override, so one config serves rho 100, 50 and 10, and a config's ``per_rho``
entry for the ratio (``config.build_config``) carries what its authors tuned per ratio (CB-Focal's
beta and gamma, cited in its file). Every row of the paper's Table 2 has its run. These runs need
a GPU to finish in hours rather than days.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

from .commands import DEFAULT_SEEDS, reproduce_command
from .grid import Grid, Row

#: ``--rhos`` when not given
DEFAULT_RHOS = (100,)

DATASETS = {"cifar10-lt": "cifar10", "cifar100-lt": "cifar100"}

#: the paper's Table 2, in its order (CE is stage 1 of the cRT run; mixup stage 1 of cRT + mixup's)
PAPER_ROWS = (
    Row("ce", "CE", "crt", "ce"),
    Row("focal", "Focal Loss", "focal", "main"),
    Row("cb-focal", "CB-Focal", "cb-focal", "main"),
    Row("drs", "CE-DRS", "drs", "main"),
    Row("ce-drw", "CE-DRW", "ce-drw", "main"),
    Row("ldam-drw", "LDAM-DRW", "ldam-drw", "main"),
    Row("crt", "cRT", "crt", "crt"),
    Row("lws", "LWS", "lws", "lws"),
    Row("bbn", "BBN", "bbn", "main"),
    Row("mixup", "mixup", "crt-mixup", "mixup"),
    Row("remix", "Remix", "remix", "main"),
    Row("m2m", "M2m", "m2m", "main"),
    Row("cam-bs", "CAM-BS", "cam-bs", "main"),
    Row("cmo", "CMO", "cmo", "main"),
    Row("crt-mixup", "cRT + mixup", "crt-mixup", "crt"),
    Row("lws-mixup", "LWS + mixup", "lws-mixup", "lws"),
    Row("csa", "CSA", "csa", "balanced"),
    Row("csa-mixup", "CSA + mixup", "csa-mixup", "balanced"),
)
#: rows that are not in the paper's Table 2: baselines this project adds, and CSA's other heads (Table 7)
EXTRA_ROWS = (
    Row("cbrs", "CB-RS", "cbrs", "main"),
    Row("la", "LA", "la", "main"),
    Row("cb-ce", "CB-CE", "cb-ce", "main"),
    Row("balanced-softmax", "Balanced Softmax", "balanced-softmax", "main"),
    Row("tau-norm", "tau-norm", "tau-norm", "tau-norm"),
    Row("dual", "dual branch", "dual", "balanced"),
    Row("csa-uniform", "CSA (uniform head)", "csa", "uniform"),
    Row("csa-ensemble", "CSA (ensemble)", "csa", "ensemble"),
)


@dataclass(frozen=True)
class Recipe:
    """A training recipe by name: its base under ``configs/_base_/recipes/`` (the optimiser and schedule) and,
    for the decoupled runs, its stage-2 bases (none: the row keeps the csa-release stage 2). Each file cites
    the lines of its authors' code it reproduces."""

    name: str
    base: str
    stage2: dict = field(default_factory=dict)  # (dataset, "crt" | "lws") -> stage-2 base


RECIPES = {r.name: r for r in (
    Recipe("csa-release", "csa-release"),
    Recipe("ldam", "ldam"),
    Recipe("bbn", "bbn"),
    Recipe("mislas", "mislas", {("cifar10-lt", "crt"): "mislas-stage2-crt-cifar10-lt",
                                ("cifar100-lt", "crt"): "mislas-stage2-crt-cifar100-lt",
                                ("cifar10-lt", "lws"): "mislas-stage2-lws", ("cifar100-lt", "lws"): "mislas-stage2-lws"}),
    Recipe("kang", "csa-release", {(d, kind): f"kang-{kind}" for d in DATASETS for kind in ("crt", "lws")}),
    Recipe("bag-of-tricks", "bag-of-tricks"),
)}
#: the runs with a decoupled stage 2, and what it re-trains (a recipe's stage 2 applies to them only)
STAGE2_RUNS = {"crt": "crt", "crt-mixup": "crt", "lws": "lws", "lws-mixup": "lws"}


def recipe_overrides(recipe: str, dataset: str, run: str) -> tuple[str, ...]:
    """``key=value`` overrides that put a shipped row (``<dataset>_<run>``, on the csa-release recipe) on
    ``recipe``: its base's keys, then its stage-2 base's for a decoupled run."""
    return _recipe_file_overrides(RECIPES[recipe].base) + stage2_overrides(recipe, dataset, run)


def stage2_overrides(recipe: str, dataset: str, run: str) -> tuple[str, ...]:
    """``key=value`` overrides of ``recipe``'s stage 2 for a decoupled run (none for another run, or where the
    recipe keeps the csa-release stage 2): what ``tailshift fork`` changes on a finished run."""
    stage2 = RECIPES[recipe].stage2.get((dataset, STAGE2_RUNS.get(run)))
    return _recipe_file_overrides(stage2) if stage2 else ()


def _recipe_file_overrides(name: str) -> tuple[str, ...]:
    from ..config import compose_yaml

    folder = Path(str(resources.files("tailshift") / "configs" / "_base_" / "recipes"))
    return tuple(_flattened(compose_yaml(folder / f"{name}.yaml")))


def _flattened(values: dict, prefix: str = "") -> list[str]:
    """Nested config data as ``a.b.c=value`` overrides (values as JSON, which the override parser reads)."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += _flattened(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


#: ``--recipe paper``: each Table 2 run on the recipe of the code its quoted number came from
PAPER_RECIPES = {
    # Cao et al.'s cifar_train.py (LDAM-DRW, CE-DRW, DRS), Cui et al.'s multipliers (Focal, CB-Focal, CB-CE),
    # CMO's cifar_train.py (built on Cao et al.'s)
    **dict.fromkeys(("focal", "cb-focal", "cb-ce", "drs", "ce-drw", "ldam-drw", "cmo"), "ldam"),
    "bbn": "bbn",  # BBN's configs/cifar10.yaml
    **dict.fromkeys(("crt-mixup", "lws-mixup"), "mislas"),  # the +mixup rows come from MiSLAS (stages 1 and 2)
    **dict.fromkeys(("crt", "lws"), "kang"),  # decoupling's stage 2 (Kang et al.)
    "cam-bs": "bag-of-tricks",  # BagofTricks-LT's first_stage configs (its stage 2 is in the row's config)
    "m2m": "ldam",  # alinlab/M2m config.py lines 163-176 (Cao et al.'s schedule), run.sh: lr 0.1, weight decay 2e-4
}
#: runs not in PAPER_RECIPES (CSA's, the dual branch, tau-norm, this project's extras, and Remix, whose authors' code
#: was not checked) stay on the CSA release's
SHARED_RECIPE = "csa-release"


def recipe_choice(recipe: str):
    """``--recipe``: paper (each run on PAPER_RECIPES), shared (every run on the CSA release's recipe) or a
    recipe name for every run, as (dataset, run) -> (recipe, overrides); no overrides where the recipe trains
    the run as shipped (kang's stage 1, say), so such runs share the shipped runs' folders. A bad name is
    refused here."""
    from ..config import config_path, load_config

    if recipe not in ("paper", "shared", *RECIPES):
        raise ValueError(f"unknown recipe {recipe!r}; known: paper, shared, {', '.join(RECIPES)}")

    def choose(dataset: str, run: str) -> tuple[str, tuple[str, ...]]:
        name = (PAPER_RECIPES.get(run, SHARED_RECIPE) if recipe == "paper"
                else SHARED_RECIPE if recipe == "shared" else recipe)
        changes = recipe_overrides(name, dataset, run)
        shipped = config_path(f"{TABLE2.configs}/{dataset}_{run}")
        return name, (changes if load_config(shipped, list(changes)) != load_config(shipped) else ())
    return choose


#: the slowest runs (two branches, ~4x the steps of a uniform epoch, or M2m's two networks and 10-step attacks),
#: started first
SLOW_RUNS = ("m2m", "cbrs", "csa", "csa-mixup", "dual", "bbn")

TABLE2 = Grid("table2", "Table 2", "CIFAR-LT, ResNet-32", "table2", PAPER_ROWS + EXTRA_ROWS, DATASETS,
              paired={"csa": ("ce", "crt", "cbrs", "la", "dual")}, first_runs=SLOW_RUNS)

#: Table 10 as released: CSA's balanced branch re-sampled (CB-RS, the default CSA), drawn uniformly
#: with the logit-adjusted loss on the uniform head (LA), or re-sampled with that loss (both); the
#: balanced branch's loss is always CE. The "balanced head" rows put LA on the balanced head instead
#: (this project's earlier reading; run with --methods). CIFAR-100-LT only, as in the paper.
TABLE10 = Grid(
    "table10", "Table 10", "CSA with logit adjustment, CIFAR-100-LT, ResNet-32", "table10",
    (Row("csa-cbrs", "CSA w/ CB-RS", "csa-cbrs", "balanced"), Row("csa-la", "CSA w/ LA", "csa-la", "balanced"),
     Row("csa-both", "CSA w/ both", "csa-both", "balanced"),
     Row("csa-la-balanced-head", "CSA w/ LA on the balanced head (not the release's)", "csa-la-balanced-head", "balanced"),
     Row("csa-both-balanced-head", "CSA w/ both, LA on the balanced head (not the release's)", "csa-both-balanced-head",
         "balanced")),
    {"cifar100-lt": "cifar100"},
    paired={"csa-la": ("csa-cbrs",), "csa-both": ("csa-cbrs",), "csa-la-balanced-head": ("csa-la",),
            "csa-both-balanced-head": ("csa-both",)},
    default_rows=("csa-cbrs", "csa-la", "csa-both"),
    first_runs=("csa-cbrs", "csa-la", "csa-both"),
)

#: Table 11: BCL, and CSA with BCL as its uniform branch's loss. CIFAR-100-LT only, as in the paper.
TABLE11 = Grid(
    "table11", "Table 11", "CSA with BCL, CIFAR-100-LT, ResNet-32", "table11",
    (Row("bcl", "BCL", "bcl", "main"), Row("csa-bcl", "BCL w/ CSA", "csa-bcl", "balanced")),
    {"cifar100-lt": "cifar100"},
    paired={"csa-bcl": ("bcl",)},
    first_runs=("csa-bcl",),
)



@reproduce_command(TABLE2.name)
def table2(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
           methods: Sequence[str] | None = None, rhos: Sequence[int] = DEFAULT_RHOS, seeds: Sequence[int] = DEFAULT_SEEDS,
           workers: int | None = None, recipe: str = "paper") -> dict:
    """Table 2 (+ Table 7's heads): CIFAR-LT, ResNet-32, every row of the paper's table and this project's extras,
    each row on its authors' recipe (``paper``), all on the CSA release's (``shared``) or on one named recipe."""
    return TABLE2.run(datasets, seeds, workers, output, overrides, methods, rhos, recipe=recipe_choice(recipe))


@reproduce_command(TABLE10.name)
def table10(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
            methods: Sequence[str] | None = None, rhos: Sequence[int] = DEFAULT_RHOS, seeds: Sequence[int] = DEFAULT_SEEDS,
            workers: int | None = None) -> dict:
    """Table 10: CSA with logit adjustment on CIFAR-100-LT."""
    return TABLE10.run(datasets, seeds, workers, output, overrides, methods, rhos)


@reproduce_command(TABLE11.name)
def table11(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
            methods: Sequence[str] | None = None, rhos: Sequence[int] = DEFAULT_RHOS, seeds: Sequence[int] = DEFAULT_SEEDS,
            workers: int | None = None) -> dict:
    """Table 11: BCL, and BCL with CSA, on CIFAR-100-LT."""
    return TABLE11.run(datasets, seeds, workers, output, overrides, methods, rhos)
