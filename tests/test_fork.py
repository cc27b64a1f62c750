"""tailshift fork: a finished two-stage run's stage 2 trained again under other settings equals a whole run of
the forked config (weights, curve and fingerprint), and what would break that is refused in one line."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_prepared

from tailshift import cli
from tailshift.config import build_config, config_path, load_config, save_config
from tailshift.engine import train
from tailshift.fork import _fork_config, fork_run
from tailshift.resolve import resolve_run
from tailshift.validation import ConfigError


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork") / "data.npz"
    data = tiny_prepared(channels=3)
    np.savez(path, x_train=data.train.images, y_train=data.train.labels, x_test=data.test.images,
             y_test=data.test.labels)
    return path


def config(data_file, output, *overrides):
    return build_config({"output": str(output), "device": "cpu", "progress": False},
                        ["data.dataset=npz", f"data.root={data_file}", "data.longtail.profile=none",
                         "data.mean=[0.2, 0.2, 0.2]", "data.std=[0.3, 0.3, 0.3]", "train.epochs=3",
                         "train.batch_size=32", "train.optim.lr=0.02", "train.eval_every=1", "method.name=crt",
                         "method.params={retrain_epochs: 2}", *overrides])


def without_times(curve):
    return [{k: v for k, v in record.items() if k not in ("seconds", "cpu_seconds")} for record in curve]


@pytest.mark.parametrize("source, fork", [
    ([], ["method.params.retrain_lr=0.05", "method.params.retrain_schedule=cosine_epoch",
          "train.optim.cosine_period=2", "method.params.retrain_epochs=3"]),
    ([], ["method.params.reinit=true", "method.params.retrain_bn=train"]),  # Kang et al.'s stage 2
    (["method.name=lws"], ["method.params.retrain_lr=0.3"]),  # its scales start again at 1
])
def test_a_fork_is_the_whole_run_of_its_config(data_file, tmp_path, source, fork):
    train(config(data_file, tmp_path / "source", *source))
    forked = fork_run(tmp_path / "source", tmp_path / "fork", fork)
    whole = train(config(data_file, tmp_path / "whole", *source, *fork))
    assert forked["fingerprint"] == whole["fingerprint"]  # `tailshift train` of the forked config resumes it
    assert forked["heads"] == whole["heads"] and forked["heads"] != json.loads(
        (tmp_path / "source" / "metrics.json").read_text())["heads"]
    assert without_times(forked["curve"]) == without_times(whole["curve"])
    assert [r["stage"] for r in forked["curve"]].count("represent") == 3  # the source's stage 1 kept, not retrained
    recorded = json.loads((tmp_path / "fork" / "fork.json").read_text())
    assert recorded["stage_index"] == 1 and recorded["overrides"] == fork
    assert recorded["source"] == str((tmp_path / "source").resolve())
    weights = [torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["method"] for name in ("fork", "whole")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


def test_a_fork_may_change_only_what_the_later_stage_reads(data_file, tmp_path):
    train(config(data_file, tmp_path / "source"))
    with pytest.raises(ConfigError, match=r"a fork may change only what its stage 1 on reads \(method\.params\."
                                          r"retrain_epochs, .*train\.optim\.cosine_period\), not train\.optim\.lr: "
                                          r"0\.02 -> 0\.05"):
        fork_run(tmp_path / "source", tmp_path / "fork", ["method.params.retrain_lr=0.05", "train.optim.lr=0.05"])
    assert not (tmp_path / "fork").exists()


def test_a_run_whose_stage_2_moved_the_backbone_statistics_is_refused(data_file, tmp_path):
    train(config(data_file, tmp_path / "source", "method.params.retrain_bn=train"))
    with pytest.raises(ValueError, match="cannot be forked: its stage 2 ran with method.params.retrain_bn=train"):
        fork_run(tmp_path / "source", tmp_path / "fork", ["method.params.retrain_lr=0.05"])
    assert not (tmp_path / "fork" / "checkpoint.pt").exists()


def test_a_one_stage_method_and_an_unfinished_first_stage_are_refused(data_file, tmp_path):
    train(config(data_file, tmp_path / "ce", "method.name=ce", "method.params={}"))
    with pytest.raises(ValueError, match="method ce has no stage to fork at"):
        fork_run(tmp_path / "ce", tmp_path / "fork")
    train(config(data_file, tmp_path / "source"))
    path = tmp_path / "source" / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "stage_index": 0, "epoch": 2}, path)  # as a run killed in its third epoch left it
    with pytest.raises(ValueError, match="has not reached stage 1 .* at stage 0, epoch 2; resume it first"):
        fork_run(tmp_path / "source", tmp_path / "fork")


def test_the_command_forks_and_resumes_a_finished_fork(data_file, tmp_path, capsys):
    train(config(data_file, tmp_path / "source"))
    argv = ["fork", str(tmp_path / "source"), "method.params.retrain_lr=0.05", "--output", str(tmp_path / "fork")]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "crt (crt head), forked from" in first and "All " in first
    assert cli.main(argv) == 0 and capsys.readouterr().out == first  # re-run: the finished fork, scored again
    assert cli.main(["fork", str(tmp_path / "source"), "method.params.retrain_lr=0.2", "--output",
                     str(tmp_path / "fork")]) == 2
    assert "was written by another config" in capsys.readouterr().err


def test_the_stage2_benchmark_forks_every_recipe_and_tabulates_them(data_file, tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import crt_stage2

    train(config(data_file, tmp_path / "source", "train.optim.schedule=step", "train.optim.milestones=[2]"))
    monkeypatch.setattr(sys, "argv", ["crt_stage2.py", str(tmp_path / "source"), "--runs-dir", str(tmp_path / "forks"),
                                      "--out", str(tmp_path / "out")])
    crt_stage2.main()
    report = json.loads((tmp_path / "out" / "crt_stage2.json").read_text())
    source = json.loads((tmp_path / "source" / "metrics.json").read_text())
    labels = [r["stage 2"] for r in report["rows"]]
    assert labels == ["the run's stage 1 (CE head, no stage 2)", "csa-release (the run's own)", "mislas", "kang",
                      "lws, as the shipped config runs it", "tau-norm, as the shipped config runs it"]
    assert report["rows"][1]["all"] == source["heads"]["crt"]["all"]
    for name, row in zip(("mislas", "kang", "lws", "tau-norm"), report["rows"][2:]):
        forked = json.loads((tmp_path / "forks" / name / "metrics.json").read_text())
        assert row["all"] == forked["heads"][forked["default_head"]]["all"]
        assert forked["heads"]["ce"] == source["heads"]["ce"]  # one representation under every stage 2
        retrained = [r["stage"] for r in forked["curve"]].count("retrain")
        assert retrained == {"mislas": 10, "kang": 10, "lws": 10, "tau-norm": 0}[name]  # each one's own epochs
    # the tiny source is no shipped config's run; the forks into the shipped methods carry their own settings
    assert [r["same_run_as_shipped_config"] for r in report["rows"]] == [None, False, None, None, False, False]
    assert "| kang |" in (tmp_path / "out" / "crt_stage2.md").read_text()


@pytest.mark.parametrize("method, fork", [
    ("lws", ["method.params.retrain_lr=0.3"]),
    ("tau-norm", ["method.params.tau=0.5"]),  # no stage 2: the source's stage-1 head scored under its tau
])
def test_a_cRT_run_forks_into_another_decoupled_method_as_its_whole_run(data_file, tmp_path, method, fork):
    train(config(data_file, tmp_path / "source", "method.params={retrain_epochs: 2, reinit: false}"))
    forked = fork_run(tmp_path / "source", tmp_path / "fork", [f"method.name={method}", *fork])
    whole = train(config(data_file, tmp_path / "whole", f"method.name={method}", "method.params={}", *fork))
    assert forked["fingerprint"] == whole["fingerprint"] and forked["config"]["method"]["name"] == method
    assert forked["heads"] == whole["heads"]
    earlier = len([r for r in whole["curve"] if r["stage"] == "represent"])
    assert without_times(forked["curve"][earlier:]) == without_times(whole["curve"][earlier:])
    for fork_record, whole_record in zip(forked["curve"][:earlier], whole["curve"][:earlier]):
        assert set(fork_record["test"]) == {"ce"}  # the source's stage-1 scores of the heads both methods have
        shared_scores = {**whole_record, "test": {"ce": whole_record["test"]["ce"]}}
        assert without_times([fork_record]) == without_times([shared_scores])


def test_a_fork_leaves_the_method_family_refused(data_file, tmp_path):
    train(config(data_file, tmp_path / "source"))
    with pytest.raises(ConfigError, match="method.name=ce: a fork of a crt run may be a run of crt, lws, "
                                          "tau-norm only"):
        fork_run(tmp_path / "source", tmp_path / "fork", ["method.name=ce", "method.params={}"])


@pytest.mark.parametrize("method", ["lws", "tau-norm"])
def test_a_fork_of_the_shipped_crt_run_is_the_shipped_run_of_the_other_method(tmp_path, method):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from crt_stage2 import shipped_fingerprint, shipped_method_overrides

    crt = resolve_run(load_config(config_path("table2/cifar10-lt_crt")))
    save_config(crt.config, tmp_path / "config.yaml")
    source = {"config": crt.config.to_dict(), "seed": crt.config.seed}
    assert shipped_fingerprint("cifar10-lt", "crt", source) == crt.fingerprint()
    forked = resolve_run(_fork_config(tmp_path, crt, list(shipped_method_overrides("cifar10-lt", method))))
    assert forked.fingerprint() == shipped_fingerprint("cifar10-lt", method, source)
    assert forked.fingerprint() != shipped_fingerprint("cifar10-lt", method, {**source, "seed": 1})
