"""Table 3: ImageNet-LT with ResNet-10 and ResNet-50 from scratch (CE, cRT, CB-RS, CSA).

Each row is one shipped config ``table3/imagenet-lt_<run>_<model>`` and one head of that
run; the grid's studies are the backbones. The images are read from ``data.root`` by loader workers; a
run of 90 epochs is a multi-GPU job, so ``nproc`` > 1 runs each config with torchrun on that
many processes, one after the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .commands import DEFAULT_SEEDS, reproduce_command
from .grid import Grid, Row, Study
from .plan import Plan
from .reports import Section, fmt_paper, paper_numbers

MODELS = {"resnet10": "ResNet-10", "resnet50": "ResNet-50"}
#: the paper's rows we do not run, as it names them
OTHER_ROWS = {"focal-loss": "Focal Loss", "oltr": "OLTR", "fsa": "FSA", "lws": "LWS", "bbn": "BBN",
              "cmo-100-epochs": "CMO (100 epochs)", "csa-100-epochs": "CSA (100 epochs)"}
ROW_NAMES = {"ce": "CE", "crt": "cRT", "cbrs": "CB-RS"}


@dataclass(frozen=True)
class BackboneGrid(Grid):
    """A grid whose studies are backbones of one dataset (``--models``), not datasets."""

    def studies(self, datasets: Sequence[str], rhos: Sequence[int] = (), mnist_root: str | None = None) -> list[Study]:
        unknown = [m for m in datasets if m not in MODELS]
        if unknown:
            raise ValueError(f"unknown {self.label} backbone {unknown[0]!r}; known: {', '.join(MODELS)}")
        return [Study(m, f"{self.configs}/imagenet-lt_{{run}}_{m}", m, (), (m,)) for m in datasets]

    def available_datasets(self, mnist_root: str | None = None) -> list[str]:
        return list(MODELS)

    def check_data(self, plan: Plan, output: Path) -> None:
        """Read the lists and find every image once, before any run starts (a missing image is one line here)."""
        from ..data.build import prepare_data

        prepare_data(plan.jobs(output)[0].resolve().data)

    def appendix(self) -> tuple[Section, ...]:
        numbers = paper_numbers()["table3"]
        rows = tuple((name, *(fmt_paper(x) for x in [numbers["resnet10"].get(key, [None])[0],
                                                       *numbers["resnet50"].get(key, [None] * 4)]))
                     for key, name in OTHER_ROWS.items())
        footer = ("Paper Table 1, ImageNet-LT column (backbone not stated), All / Many / Med / Few: "
                  + "; ".join(f"{ROW_NAMES[k]} {' / '.join(f'{x:.1f}' for x in v)}" for k, v in numbers["table1"].items())
                  + ".")
        return (Section(("Method", "ResNet-10 All", "ResNet-50 All", "Many", "Med", "Few"), rows,
                        heading="The paper's other rows", footer=footer),)


#: CE is stage 1 of the cRT run
TABLE3 = BackboneGrid(
    "table3", "Table 3", "ImageNet-LT", "table3",
    (Row("ce", "CE", "crt", "ce"), Row("crt", "cRT", "crt", "crt"), Row("cbrs", "CB-RS", "cbrs", "main"),
     Row("csa", "CSA", "csa", "balanced"), Row("csa-uniform", "CSA (uniform head)", "csa", "uniform"),
     Row("csa-ensemble", "CSA (ensemble)", "csa", "ensemble")),
    {},
    paired={"csa": ("ce", "crt", "cbrs")},
    default_rows=("ce", "crt", "cbrs", "csa"),
    sweeps_rho=False,
)


@reproduce_command(TABLE3.name)
def table3(output: Path, overrides: Sequence[str] = (), models: Sequence[str] | None = None,
           methods: Sequence[str] | None = None, seeds: Sequence[int] = DEFAULT_SEEDS, workers: int = 1,
           nproc: int = 1) -> dict:
    """Table 3: ImageNet-LT, ResNet-10 / ResNet-50 from scratch, one run at a time unless --workers says more.

    Each run takes the machine (or, with ``nproc``, its GPUs through torchrun)."""
    return TABLE3.run(models, seeds, workers, output, overrides, methods, nproc=nproc)
