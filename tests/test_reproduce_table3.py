"""Table 3 end to end on a tiny ImageNet-LT written to disk (a LeNet, one epoch: the plumbing, not the numbers)."""
from __future__ import annotations

import json

import pytest
import yaml
from conftest import write_imagenet_lt

from tailshift import cli
from tailshift.config import build_config, config_path, read_yaml
from tailshift.reproduce.reports import paper_numbers
from tailshift.reproduce.table3 import MODELS, TABLE3


def test_shipped_configs_follow_the_paper():
    for model in MODELS:
        for run in ("ce", "crt", "cbrs", "csa"):
            cfg = build_config(read_yaml(config_path(f"table3/imagenet-lt_{run}_{model}")))
            assert (cfg.model.name, cfg.method.name, cfg.train.epochs, cfg.train.batch_size) == (model, run, 90, 256)
            o = cfg.train.optim
            assert (o.lr, o.momentum, o.weight_decay, o.schedule) == (0.2, 0.9, 5e-4, "cosine")
            d = cfg.data
            assert (d.dataset, d.class_order, d.augment, d.color_jitter, d.crop_size, d.resize_size, d.groups) == \
                ("imagenet-lt", "count", "resized_crop", 0.4, 224, 256, "index")
    assert paper_numbers()["table3"]["resnet50"]["csa"] == [49.1, 62.5, 46.6, 24.1]
    assert paper_numbers()["table3"]["resnet10"]["crt"] == [41.8, None, None, None]


def test_table3_runs_and_prints_the_paper_beside_ours(tmp_path, capsys):
    root = write_imagenet_lt(tmp_path / "imagenet")
    out = tmp_path / "table3"
    code = cli.main(["reproduce", "table3", "--models", "resnet10", "--seeds", "1", "--output", str(out),
                     f"data.root={root}", "model.name=lenet2d", "data.crop_size=32", "data.resize_size=36",
                     "data.workers=0", "train.epochs=1", "train.batch_size=16", "train.eval_every=0", "train.optim.lr=0.02",
                     "data.group_bounds=[2, 4]",
                     "crt:method.params.retrain_epochs=1", "csa:method.params.warmup_epochs=0",
                     "csa:method.params.delta=0.0"])  # every sample enters the bank: the balanced head trains
    assert code == 0
    md = (out / "table3.md").read_text()
    assert "# Table 3: ImageNet-LT" in md and "| resnet10 | CSA |" in md and "| 42.7 |" in md
    assert "| CSA (100 epochs) | 43.2 | 49.7 | 63.6 | 47.0 | 23.8 |" in md
    with pytest.raises(ValueError, match="unknown Table 3 backbone 'resnet18'; known: resnet10, resnet50"):
        TABLE3.studies(["resnet18"])
    saved = json.loads((out / "table3.json").read_text())
    assert {r["key"] for r in saved["runs"]} == {"resnet10/crt/seed0", "resnet10/cbrs/seed0", "resnet10/csa/seed0"}
    csa = saved["table"]["resnet10"]["csa"]
    assert not any(r["diverged"] for r in saved["runs"]) and csa["untrained"] == 0 and csa["all"]["mean"] >= 0
    run_cfg = yaml.safe_load((out / "runs" / "resnet10" / "csa" / "seed0" / "config.yaml").read_text())
    assert run_cfg["data"]["dataset"] == "imagenet-lt" and run_cfg["method"]["params"]["warmup_epochs"] == 0
    assert "Table 3" in capsys.readouterr().out


def test_table3_jobs_scope_overrides_by_run(tmp_path):
    jobs = TABLE3.plan(TABLE3.studies(["resnet50"]), TABLE3.select_rows(["csa"]), 2,
                       ["csa:method.params.delta=0.5"]).jobs(tmp_path)
    assert [j.key for j in jobs] == ["resnet50/csa/seed0", "resnet50/csa/seed1"]
    assert jobs[0].config == "table3/imagenet-lt_csa_resnet50" and "method.params.delta=0.5" in jobs[0].overrides
