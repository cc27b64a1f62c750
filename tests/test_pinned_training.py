"""Training of the methods that produced committed results is pinned: the per-epoch losses and
per-class test accuracies of tiny runs, recorded on commit 4084050 (before losses became modules,
the two-stage base and the dual-branch base), must not move. A change here changes every result."""
import pytest

from conftest import tiny_prepared
from tailshift.config import build_config
from tailshift.engine import train

PINNED = {
    "crt": (["method.name=crt", "method.params={retrain_epochs: 2}"],
            [2.26165, 1.91706, 1.52782, 1.78996, 1.57359],
            {"ce": [0, 100, 100, 0, 0, 0, 0, 100, 0, 0], "crt": [100, 100, 100, 0, 0, 100, 0, 25, 0, 0]}),
    "csa": (["method.name=csa", "method.params={warmup_epochs: 1, delta: 0.0}"],
            [2.44175, 4.52736, 4.21623],
            {"balanced": [0, 0, 45, 15, 0, 0, 100, 0, 100, 65], "uniform": [0, 0, 100, 0, 0, 0, 0, 100, 0, 0],
             "ensemble": [0, 100, 100, 0, 0, 0, 0, 100, 100, 100]}),
    "csa driven by the balanced stream": (
            ["method.name=csa", "method.params={warmup_epochs: 1, delta: 0.0, driver: balanced}"],
            [2.06943, 3.48484, 2.67261],
            {"balanced": [0, 0, 0, 0, 0, 0, 0, 0, 100, 80], "uniform": [100, 100, 100, 0, 0, 0, 0, 100, 100, 0],
             "ensemble": [100, 100, 100, 0, 0, 100, 0, 100, 100, 0]}),
    "dual": (["method.name=dual"], [5.05854, 4.28758, 3.88799],
             {"balanced": [0, 0, 100, 25, 0, 0, 100, 0, 100, 100], "uniform": [0, 100, 0, 0, 0, 0, 0, 100, 0, 0],
              "ensemble": [0, 100, 100, 0, 0, 5, 0, 100, 100, 100]}),
    "la": (["method.name=la"], [1.86482, 1.5765, 1.12626], {"main": [0, 75, 100, 0, 0, 100, 100, 100, 0, 0]}),
}


@pytest.mark.parametrize("name", PINNED)
def test_shipped_methods_train_as_before(name, tmp_path):
    overrides, losses, per_class = PINNED[name]
    # one intra-op thread, as the values were recorded: float sums (and so the losses) depend on the thread count
    cfg = build_config({"output": str(tmp_path), "progress": False, "threads": 1},
                       ["train.epochs=3", "train.batch_size=32", *overrides])
    metrics = train(cfg, tiny_prepared())
    assert [record["loss"] for record in metrics["curve"]] == losses
    assert {head: r["per_class"] for head, r in metrics["heads"].items()} == per_class
