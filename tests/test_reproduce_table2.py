import json

import numpy as np
import pytest

from conftest import write_cifar100
from tailshift.data.sources import KNOWN_CAVEATS
from tailshift.reproduce import table2
from tailshift.config import config_path
from tailshift.reproduce.table2 import TABLE2, TABLE10, TABLE11


def jobs_for(datasets, rhos, seeds, out, overrides, rows, grid=TABLE2):
    return grid.plan(grid.studies(datasets, rhos), rows, seeds, overrides).jobs(out)


def test_table2_jobs_one_per_run_rho_and_seed_dual_runs_first(tmp_path):
    rows = TABLE2.select_rows(["ce", "crt", "csa", "csa-ensemble", "la"])
    jobs = jobs_for(["cifar10-lt"], [100, 10], 2, tmp_path, ["train.epochs=1", "train.optim.warmup_epochs=0"], rows)
    assert len(jobs) == 3 * 2 * 2  # runs crt (CE + cRT), csa (two heads), la
    assert all(j.run == "csa" for j in jobs[:4])
    assert all(config_path(j.config).exists() for j in jobs)
    cfg = next(j for j in jobs if j.key == "cifar10-lt rho 10/la/seed1").resolve()
    assert (cfg.data.longtail.rho, cfg.seed, cfg.train.epochs) == (10, 1, 1)
    assert cfg.output.endswith("cifar10-lt-rho10/la/seed1")


def test_run_scoped_overrides_reach_only_their_run(tmp_path):
    rows = TABLE2.select_rows(["crt", "csa"])
    jobs = jobs_for(["cifar10-lt"], [100], 1, tmp_path,
                    ["train.epochs=16", "train.optim.warmup_epochs=1", "csa:method.params.warmup_epochs=2"], rows)
    by_run = {j.run: j.resolve() for j in jobs}
    assert by_run["csa"].method.params["warmup_epochs"] == 2 and by_run["csa"].train.epochs == 16
    assert "warmup_epochs" not in by_run["crt"].method.params and by_run["crt"].train.epochs == 16
    with pytest.raises(ValueError, match="scoped to run 'bbn'; runs of this study: crt, csa"):
        jobs_for(["cifar10-lt"], [100], 1, tmp_path, ["bbn:seed=1"], rows)


def test_table2_paper_rows_take_table7_heads_for_cifar100_rho100():
    paper = TABLE2.paper_rows(TABLE2.studies(["cifar10-lt", "cifar100-lt"], [100, 10]))
    assert paper["cifar10-lt rho 100"]["csa"] == [80.6, None, None, None]
    assert paper["cifar100-lt rho 10"]["ce"] == [55.7, None, None, None]
    assert paper["cifar100-lt rho 100"]["csa-uniform"] == [39.4, 68.3, 37.3, 6.1]
    assert "cifar10-lt rho 50" not in paper


def test_table2_knows_every_row_of_the_papers_table_and_its_numbers():
    # the paper's Table 2, column CIFAR10-LT rho 100, top to bottom ("-": not reported)
    paper = TABLE2.paper_rows(TABLE2.studies(["cifar10-lt"], [100]))["cifar10-lt rho 100"]
    column = [70.4, 70.4, 74.6, 75.6, 76.3, 77.0, 75.7, 73.0, 79.8, 73.1, 75.4, 79.1, 75.4, None, 79.1, 76.3, 80.6, 82.5]
    assert [r.name for r in table2.PAPER_ROWS] == list(paper)
    assert [paper[r.name][0] for r in table2.PAPER_ROWS] == column
    assert TABLE2.paper_rows(TABLE2.studies(["cifar100-lt"], [50]))["cifar100-lt rho 50"]["remix"] == [None] * 4
    assert all(config_path(f"table2/{d}_{r.run}").exists() for d in ("cifar10-lt", "cifar100-lt") for r in TABLE2.rows)


def test_table2_unknown_method_or_dataset_lists_known(tmp_path):
    with pytest.raises(ValueError, match="unknown Table 2 method 'magic'; known: ce, focal, cb-focal, drs"):
        TABLE2.select_rows(["magic"])
    with pytest.raises(ValueError, match="unknown Table 2 dataset 'imagenet-lt'; known: cifar10-lt, cifar100-lt"):
        TABLE2.run(["imagenet-lt"], 1, 1, tmp_path, [])


def test_table2_end_to_end_on_a_generated_cifar_file(tmp_path):
    """`reproduce table2` on a tiny generated 32x32 colour .npz: CE, cRT and CSA's heads beside the paper."""
    rng = np.random.default_rng(0)

    def split(n):
        y = np.repeat(np.arange(10), n)
        x = rng.integers(0, 60, (len(y), 32, 32, 3), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, 3 * c: 3 * c + 3, :, c % 3] = 255
        return x, y.astype(np.int64)

    (xtr, ytr), (xte, yte) = split(12), split(3)
    path = tmp_path / "cifar10-jpeg.npz"  # the name of the known JPEG-decoded copy: its caveat must show
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    out = tmp_path / "out"
    table = TABLE2.run(["cifar10-lt"], 1, 1, out,
                       [f"data.root={path}", "data.longtail.n_max=12", "train.epochs=1", "train.optim.warmup_epochs=0", "train.batch_size=16"],
                       ["ce", "crt", "csa", "csa-uniform"], rhos=[10])
    assert set(table["cifar10-lt rho 10"]) == {"ce", "crt", "csa", "csa-uniform"}
    md = (out / "table2.md").read_text()
    assert "| cifar10-lt rho 10 | CSA (uniform head) |" in md and "| 89.8 |" in md
    assert f"Data: {path} (**a JPEG-decoded copy of CIFAR-10" in md
    # CSA paired with the baselines in the table only (CB-RS, LA and dual were not run); one seed: no p-value
    # (a tiny one-epoch run may collapse, and then has no pair at all)
    pairs = json.loads((out / "table2.json").read_text())["paired"]["cifar10-lt rho 10"]
    assert list(pairs) == ["csa - ce", "csa - crt"] and pairs["csa - crt"]["p"] is None
    assert f"| cifar10-lt rho 10 | CSA − cRT | {pairs['csa - crt']['seeds']} |" in md
    metrics = json.loads((out / "runs" / "cifar10-lt-rho10" / "csa" / "seed0" / "metrics.json").read_text())
    assert metrics["data_source"] == {"path": str(path), "caveat": KNOWN_CAVEATS["cifar10-jpeg.npz"]}


def test_table2_recipe_paper_end_to_end_names_each_rows_recipe(tmp_path):
    """``--recipe paper``: cRT on Kang et al.'s stage 2 and LDAM-DRW on Cao et al.'s recipe, each in its
    recipe's folder, the table naming the recipe; CSA stays where the shipped (csa-release) runs live."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 12)
    x = rng.integers(0, 255, (len(y), 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[::4], y_test=y[::4])
    out = tmp_path / "out"
    table2.table2(out, [f"data.root={path}", "data.longtail.n_max=12", "train.epochs=1", "train.optim.warmup_epochs=0",
                        "train.batch_size=16", "crt:method.params.retrain_epochs=1"],
                  datasets=["cifar10-lt"], methods=["crt", "ldam-drw", "csa"], rhos=[10], seeds=1, workers=1)
    md = (out / "table2.md").read_text()
    assert "| cifar10-lt rho 10 | cRT [kang recipe] |" in md and "| cifar10-lt rho 10 | LDAM-DRW [ldam recipe] |" in md
    assert "| cifar10-lt rho 10 | CSA [csa-release recipe] |" in md
    runs = out / "runs" / "cifar10-lt-rho10"
    crt = json.loads((runs / "kang" / "crt" / "seed0" / "metrics.json").read_text())["config"]
    ldam = json.loads((runs / "ldam" / "ldam-drw" / "seed0" / "metrics.json").read_text())["config"]
    assert crt["method"]["params"]["retrain_schedule"] == "cosine" and crt["train"]["optim"]["lr"] == 0.2
    assert (ldam["train"]["optim"]["lr"], ldam["train"]["optim"]["gamma"]) == (0.1, 0.01)
    assert (runs / "csa" / "seed0" / "metrics.json").exists()
    assert json.loads((out / "table2.json").read_text())["recipes"]["cifar10-lt rho 10"] == {
        "crt": "kang", "ldam-drw": "ldam", "csa": "csa-release"}


def test_table10_grid_uses_its_configs_and_the_papers_four_columns(tmp_path):
    rows = TABLE10.select_rows(None)
    assert list(rows) == ["csa-cbrs", "csa-la", "csa-both"]
    jobs = jobs_for(["cifar100-lt"], [100], 2, tmp_path, [], rows, TABLE10)
    assert len(jobs) == 3 * 2 and all(j.config.startswith("table10/cifar100-lt_csa-") for j in jobs)
    params = {j.run: j.resolve().method.params for j in jobs}
    # the release: LA on the uniform head only, plain CE on the balanced branch
    assert params["csa-la"]["balanced_stream"] == "uniform"
    assert params["csa-la"]["uniform_loss"] == "la" and params["csa-la"]["balanced_loss"] == "ce"
    assert params["csa-both"].get("balanced_stream", "balanced") == "balanced"
    assert params["csa-both"]["uniform_loss"] == "la" and params["csa-both"]["balanced_loss"] == "ce"
    variants = TABLE10.select_rows(["csa-la-balanced-head", "csa-both-balanced-head"])
    old = {j.run: j.resolve().method.params for j in jobs_for(["cifar100-lt"], [100], 1, tmp_path, [], variants, TABLE10)}
    assert old["csa-la-balanced-head"]["balanced_loss"] == "la" and old["csa-la-balanced-head"].get("uniform_loss", "ce") == "ce"
    assert old["csa-both-balanced-head"]["balanced_loss"] == "la"
    paper = TABLE10.paper_rows(TABLE10.studies(["cifar100-lt"], [100, 50]))
    assert paper == {"cifar100-lt rho 100": {"csa-cbrs": [45.8, 64.3, 49.7, 18.2], "csa-la": [47.2, 62.4, 48.8, 26.1],
                                             "csa-both": [45.0, 48.7, 51.0, 31.4]},
                     "cifar100-lt rho 50": {}}
    with pytest.raises(ValueError, match="unknown Table 10 method 'csa'; known: csa-cbrs, csa-la, csa-both, csa-la-balanced-head"):
        TABLE10.select_rows(["csa"])
    with pytest.raises(ValueError, match="unknown Table 10 dataset 'cifar10-lt'; known: cifar100-lt"):
        TABLE10.run(["cifar10-lt"], 1, 1, tmp_path, [])


def test_table10_end_to_end_on_generated_cifar100_pickles(tmp_path):
    """`reproduce table10` on a tiny generated CIFAR-100 folder: CSA w/ LA beside the paper's row."""
    write_cifar100(tmp_path, 4)
    out = tmp_path / "out"
    table = TABLE10.run(["cifar100-lt"], 1, 1, out,
                        [f"data.root={tmp_path}", "data.longtail.profile=none", "data.longtail.n_max=1",  # no empty class
                         "train.epochs=1", "train.optim.warmup_epochs=0",
                         "train.batch_size=32", "model.name=resnet20"], ["csa-la"])
    assert set(table["cifar100-lt rho 100"]) == {"csa-la"}
    md = (out / "table10.md").read_text()
    assert md.startswith("# Table 10: CSA with logit adjustment")
    assert "| cifar100-lt rho 100 | CSA w/ LA |" in md and "| 47.2 | 62.4 / 48.8 / 26.1 |" in md


def test_table11_end_to_end_on_generated_cifar100_pickles(tmp_path):
    """`reproduce table11`: BCL and BCL w/ CSA beside the paper's Table 11, paired seed by seed."""
    write_cifar100(tmp_path, 2)
    out = tmp_path / "out"
    table = TABLE11.run(["cifar100-lt"], 1, 1, out,
                        [f"data.root={tmp_path}", "data.longtail.profile=none", "data.longtail.n_max=2", "train.epochs=1", "train.optim.warmup_epochs=0",
                         "train.batch_size=64", "model.name=resnet20", "csa-bcl:method.params.warmup_epochs=0"], rhos=[50])
    assert set(table["cifar100-lt rho 50"]) == {"bcl", "csa-bcl"}
    md = (out / "table11.md").read_text()
    assert md.startswith("# Table 11: CSA with BCL")
    assert "| cifar100-lt rho 50 | BCL | " in md and "| 56.6 | - / - / - |" in md and "| 57.1 |" in md


@pytest.mark.parametrize("grid, dataset", [("table2", "cifar10-lt"), ("table2", "cifar100-lt"), ("table10", "cifar100-lt")])
def test_cifar_balanced_streams_draw_n_max_times_classes_per_epoch(grid, dataset):
    # the release's class-balanced loader: n_max x C draws an epoch (CIFAR-100-LT rho 100: 50,000, not 10,847)
    from tailshift.data.longtail import profile_counts
    from tailshift.data.sampling import Sampler, StreamRequest, stream_spec
    from tailshift.config import config_path, load_config

    classes = 10 if dataset == "cifar10-lt" else 100
    for cfg_path in sorted(config_path(f"{grid}/{dataset}_csa-mixup" if grid == "table2" else f"{grid}/{dataset}_csa-la")
                           .parent.glob(f"{dataset}_*.yaml")):
        cfg = load_config(cfg_path)
        counts = profile_counts("exp", classes, cfg.data.longtail.n_max, cfg.data.longtail.rho)
        labels = np.repeat(np.arange(classes), counts)
        s = cfg.sampling
        sampler = Sampler(labels, stream_spec(StreamRequest("balanced"), s.balanced, s.per_class, s.balanced_epoch), 0)
        assert len(sampler) == max(counts) * classes, cfg_path.name
        assert len(sampler.epoch_indices(0)) == max(counts) * classes
    if dataset == "cifar100-lt":
        assert max(counts) * classes == 50_000 and len(labels) == 10_847


@pytest.mark.parametrize("dataset, rho, beta, gamma", [
    # BagofTricks-LT configs/cao_cifar/re_weighting/cbfocal/<dataset>_im<rho>.yaml; rho 10: none, rho 100's values
    ("cifar10-lt", 100, 0.9999, 1.0), ("cifar10-lt", 50, 0.9999, 2.0), ("cifar10-lt", 10, 0.9999, 1.0),
    ("cifar100-lt", 100, 0.9, 1.0), ("cifar100-lt", 50, 0.99, 1.0), ("cifar100-lt", 10, 0.9, 1.0)])
def test_cb_focal_takes_the_authors_beta_and_gamma_for_each_rho(tmp_path, dataset, rho, beta, gamma):
    job, = jobs_for([dataset], [rho], 1, tmp_path, [], TABLE2.select_rows(["cb-focal"]))
    loss = job.resolve().method.params["loss_params"]
    assert (loss["beta"], loss["loss_params"]["gamma"]) == (beta, gamma)
