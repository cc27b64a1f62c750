"""``reproduce lift``: LIFT (Shi et al., ICML 2024) on CIFAR-100-LT, ImageNet-LT, Places-LT and iNaturalist 2018,
and CSA's dual head on it, beside the authors' reported accuracy.

Each row is one shipped config ``lift/<dataset>_<run>`` and one head of that run. The CLIP weights come from
open_clip's download (``model.pretrained=hub``) or a local file (``model.pretrained=PATH``); the list datasets
need ``data.root=PATH``, so name one dataset a command (``--datasets imagenet-lt data.root=...``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .commands import DEFAULT_SEEDS, reproduce_command
from .grid import Grid, Row

LIFT = Grid(
    "lift", "LIFT", "CLIP ViT-B/16 with AdaptFormer (lightweight fine-tuning), 10 epochs (20 on iNaturalist)", "lift",
    (Row("lift", "LIFT", "lift", "main"), Row("lift-csa", "LIFT + CSA", "lift-csa", "balanced"),
     Row("lift-csa-uniform", "LIFT + CSA (uniform head)", "lift-csa", "uniform")),
    {"cifar100-lt": "cifar100", "imagenet-lt": "imagenet-lt", "places-lt": "places-lt", "inat2018": "inat2018"},
    paired={"lift-csa": ("lift",)},
    default_rows=("lift", "lift-csa"),
    sweeps_rho=False,
)


@reproduce_command(LIFT.name)
def lift(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
         methods: Sequence[str] | None = None, seeds: Sequence[int] = DEFAULT_SEEDS, workers: int | None = 1,
         nproc: int = 1) -> dict:
    """LIFT and LIFT + CSA on the four long-tail benchmarks, one run at a time unless --workers says more."""
    return LIFT.run(datasets, seeds, workers, output, overrides, methods, nproc=nproc)
