import json

import numpy as np
import pytest

from tailshift import cli
from tailshift.reproduce import ablations


def runs_by_row(plan):
    """table -> row label -> the run it reads"""
    rows = {}
    for (table, label), variant in plan.variants.items():
        rows.setdefault(table, {})[label] = variant.run
    return rows


def test_rows_that_resolve_to_one_config_share_its_runs(tmp_path):
    tables = ablations.select_tables(None, "fashion-lt")
    plan = ablations.plan("fashion-lt", tables, 2, ["train.epochs=2"])
    jobs, rows = plan.jobs(tmp_path), runs_by_row(plan)
    assert rows["table4"] == {"with Q": "base", "w/o Q": "use_bank=False"}
    assert rows["table5"]["delta = 0.8"] == "base" and rows["table5"]["delta = 0"] == "delta=0.0"
    assert rows["table6"]["V = 1 B"] == "base" and rows["figure8"]["U(0, 1)"] == "base"
    distinct = {slug for by_row in rows.values() for slug in by_row.values()}
    assert len(distinct) == 1 + 1 + 9 + 6 + 6 and len(jobs) == 2 * len(distinct)
    cfg = next(j for j in jobs if (j.run, j.seed) == ("delta=0.3", 1)).resolve()
    assert (cfg.method.params["delta"], cfg.seed, cfg.train.epochs) == (0.3, 1, 2)
    assert cfg.output == str(tmp_path / "runs" / "fashion-lt" / "delta=0.3" / "seed1")


def test_run_scoped_overrides_reach_every_csa_variant(tmp_path):
    jobs = ablations.plan("fashion-lt", ablations.select_tables(["table4"], "fashion-lt"), 1,
                          ["csa:method.params.warmup_epochs=0"]).jobs(tmp_path)
    assert [j.resolve().method.params["warmup_epochs"] for j in jobs] == [0, 0]


def test_mnist_studies_read_the_mnist_root(tmp_path):
    tables = ablations.select_tables(["table4"], "cmnist-lt")
    jobs = ablations.plan("cmnist-lt", tables, 1, [], mnist_root="/data/mnist").jobs(tmp_path)
    assert {j.resolve().data.root for j in jobs} == {"/data/mnist"}
    jobs = ablations.plan("fashion-lt", tables, 1, [], mnist_root="/data/mnist").jobs(tmp_path)
    assert {j.resolve().data.root for j in jobs} == {None}


def test_unknown_table_study_and_cam_on_a_non_pooled_backbone_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown ablation 'table9'; known: table4, table5, table6, table8, figure8"):
        ablations.select_tables(["table9"], "fashion-lt")
    with pytest.raises(ValueError, match="table8 needs classic CAM.*'fashion-lt'"):
        ablations.select_tables(["table8"], "fashion-lt")
    assert "table8" not in ablations.select_tables(None, "fashion-lt")
    assert "table8" in ablations.select_tables(None, "cifar100-lt")
    with pytest.raises(ValueError, match="unknown ablation study 'svhn'; known: cifar100-lt"):
        ablations.run(tmp_path, study="svhn")


def test_cli_error_for_an_unknown_study_is_one_line(capsys, tmp_path):
    assert cli.main(["reproduce", "ablations", "--study", "svhn", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("tailshift: error: unknown ablation study 'svhn'; known:")


def test_ablations_end_to_end_on_a_generated_file(tmp_path):
    """Table 4 on a tiny generated 28x28 set: both rows trained, printed beside the paper's figures."""
    rng = np.random.default_rng(0)

    def split(n):
        y = np.repeat(np.arange(10), n)
        x = rng.integers(0, 50, (len(y), 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, 2 + 2 * c: 5 + 2 * c, 4:24] = 255
        return x, y.astype(np.int64)

    (xtr, ytr), (xte, yte) = split(12), split(3)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    out = tmp_path / "out"
    table = ablations.run(out, study="fashion-lt", tables=["table4"], seeds=1, workers=1, overrides=[
                          "data.dataset=npz", f"data.root={path}", "data.longtail.n_max=12", "data.longtail.rho=10",
                           "train.epochs=3", "train.batch_size=16", "csa:method.params.warmup_epochs=1",
                           "csa:method.params.delta=0.0", "csa:method.params.stop_last_epochs=1"])
    assert set(table["table4"]) == {"with Q", "w/o Q"} and table["table4"]["w/o Q"].runs == 1
    md = (out / "ablations.md").read_text()
    assert "## Table 4: the context bank Q" in md and "| 41.2 | 65.1 / 41.9 / 10.7 |" in md
    assert "The paper's figures are for cifar100-lt, not this study" in md
    summary = json.loads((out / "ablations.json").read_text())
    assert summary["rows"]["table4"] == {"with Q": "base", "w/o Q": "use_bank=False"}
    curve = json.loads((out / "runs" / "fashion-lt" / "use_bank=False" / "seed0" / "curve.json").read_text())
    # epoch 1 warms up, epoch 3 is plain (stop_last_epochs 1); without the bank, epoch 2 fuses
    # contexts from each step's own uniform batch
    assert [round(e["fused"], 2) for e in curve][0] == 0 and curve[1]["fused"] > 0 and curve[2]["fused"] == 0


def test_figure8_uniform_row_is_the_base_cifar_run(tmp_path):
    # the CIFAR CSA configs leave lambda's distribution at its default: the row that spells it out
    # resolves to the same params, so it reuses the base run instead of training 200 epochs again
    for study in ("cifar10-lt", "cifar100-lt"):
        plan = ablations.plan(study, ablations.select_tables(["figure8"], study), 1, [])
        assert plan.variants["figure8", "U(0, 1)"].run == "base"
