"""The commands of the figures drawn from seed-0 models trained in this process, or from the data (Figures 2,
3, 7, 10, 11): each says which options it takes and picks its dataset; the drawing (torch, matplotlib)
is ``figures``, imported when the command runs."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .commands import reproduce_command
from .grid import Study
from .table1 import pick_datasets
from .table2 import DEFAULT_RHOS, TABLE2


def _cifar_study(datasets: Sequence[str] | None, rhos: Sequence[int]) -> Study:
    """The first of ``datasets`` (default cifar100-lt, the paper's) at the first of ``rhos``, as a Table 2 study."""
    return TABLE2.studies([(datasets or ["cifar100-lt"])[0]], [rhos[0]])[0]


@reproduce_command("figure2")
def figure2(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
            mnist_root: str | None = None) -> dict:
    """Figure 2: 2-d embeddings of train and test under uniform sampling (CE) and CB-RS, on a grey set."""
    from .figures import draw_figure2

    return draw_figure2(pick_datasets(datasets, mnist_root, "figure2", coloured=False)[0], output, overrides,
                        mnist_root)


@reproduce_command("figure3")
def figure3(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
            mnist_root: str | None = None) -> dict:
    """Figures 3 and 5: Grad-CAM under CE, CB-RS and CSA on a coloured LeNet set, and CSA's context shift."""
    from .figures import draw_figure3

    coloured = [d for d in (datasets or ["cfashion-lt"]) if d.startswith("c")]
    if not coloured:
        raise ValueError(f"figure3 needs a coloured dataset (cfashion-lt or cmnist-lt), got {', '.join(datasets)}")
    return draw_figure3(coloured[0], output, overrides, mnist_root)


@reproduce_command("figure7")
def figure7(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
            mnist_root: str | None = None) -> Path:
    """Figure 7: a grid of coloured-context training samples (CMNIST-LT, or CFashion-LT without MNIST)."""
    from .figures import draw_figure7

    return draw_figure7(pick_datasets(datasets, mnist_root, "figure7", coloured=True)[0], output, overrides,
                        mnist_root)


@reproduce_command("figure10")
def figure10(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
             rhos: Sequence[int] = DEFAULT_RHOS) -> dict:
    """Figure 10: CIFAR-LT test features of CE, CB-RS and CSA on their first two principal components."""
    from .figures import draw_figure10

    return draw_figure10(_cifar_study(datasets, rhos), output, overrides)


@reproduce_command("figure11")
def figure11(output: Path, overrides: Sequence[str] = (), datasets: Sequence[str] | None = None,
             rhos: Sequence[int] = DEFAULT_RHOS) -> dict:
    """Figures 11 and 12: Grad-CAM under CE, CB-RS and CSA on CIFAR-LT, and the tail images above delta."""
    from .figures import draw_figure11

    return draw_figure11(_cifar_study(datasets, rhos), output, overrides)
