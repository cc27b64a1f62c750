import json
import math

import pytest
import torch

from conftest import fit_until_interrupted
from tailshift.config import build_config, load_config
from tailshift.engine import (CheckpointMismatchError, DamagedCheckpointError, DivergenceError, Trainer, best_epochs,
                              learning_rate, train)
from tailshift.io import RunLock
from tailshift.optim import build_optimizer


def cfg_for(tmp_path, *overrides, name="run"):
    return build_config({"output": str(tmp_path / name), "progress": False},
                        ["train.epochs=2", "train.batch_size=32", "method.params={}", *overrides])


def test_end_to_end_run_writes_its_folder(prepared, tmp_path):
    metrics = train(cfg_for(tmp_path, "method.name=cbrs"), prepared)
    out = tmp_path / "run"
    saved = json.loads((out / "metrics.json").read_text())
    assert (out / "config.yaml").exists() and (out / "curve.json").exists() and (out / "checkpoint.pt").exists()
    assert saved["seed"] == 0 and "torch" in saved["versions"]
    r = saved["result"]
    assert set(r) >= {"all", "many", "med", "few", "per_class", "collapsed"}
    assert len(r["per_class"]) == 10
    assert len(saved["curve"]) == 2 and saved["curve"][-1]["test"]["main"]["all"] == r["all"]
    assert metrics["result"]["all"] > 20  # the tiny set is separable: training does something


def test_metrics_keep_the_best_test_epoch_beside_the_final_one(prepared, tmp_path):
    metrics = train(cfg_for(tmp_path, "method.name=ce", "train.epochs=3", "train.eval_every=1"), prepared)
    evaluated = [e for e in metrics["curve"] if "test" in e]
    best = max(evaluated, key=lambda e: e["test"]["main"]["all"])
    assert len(evaluated) == 3
    assert metrics["best_epoch"]["main"] == {"stage": best["stage"], "epoch": best["epoch"], **best["test"]["main"]}
    assert metrics["result"]["all"] == evaluated[-1]["test"]["main"]["all"]  # the final epoch stays the headline


def test_the_best_epoch_is_chosen_per_head_on_all_the_earliest_on_a_tie():
    scores = lambda a: {"all": a, "many": a + 1, "med": a, "few": a - 1}  # noqa: E731
    curve = [{"stage": "s", "epoch": 1, "loss": 1.0},
             {"stage": "s", "epoch": 2, "test": {"a": scores(50.0), "b": scores(10.0)}},
             {"stage": "t", "epoch": 1, "test": {"a": scores(40.0), "b": scores(30.0)}},
             {"stage": "t", "epoch": 2, "test": {"a": scores(50.0), "b": scores(20.0)}}]
    assert best_epochs(curve) == {"a": {"stage": "s", "epoch": 2, **scores(50.0)},
                                  "b": {"stage": "t", "epoch": 1, **scores(30.0)}}


def test_crt_reports_ce_head_identical_to_a_ce_run(prepared, tmp_path):
    crt = train(cfg_for(tmp_path, "method.name=crt", "method.params={retrain_epochs: 1}", name="crt"), prepared)
    ce = train(cfg_for(tmp_path, "method.name=ce", name="ce"), prepared)
    assert crt["heads"]["ce"]["per_class"] == ce["heads"]["main"]["per_class"]
    assert [s["stage"] for s in crt["curve"]] == ["represent", "represent", "retrain"]


def test_the_method_is_built_with_the_params_the_fingerprint_hashes(prepared, tmp_path):
    trainer = Trainer(cfg_for(tmp_path, "method.name=crt", "method.params={retrain_epochs: 1}"), prepared)
    assert trainer.method.params is trainer.run.params  # resolved once, shared
    assert trainer.run.params.retrain_epochs == 1 and trainer.run.resolved_dict()["method"]["params"]["reinit"] is False
    assert Trainer(trainer.run, prepared).run is trainer.run  # a resolved run is taken as it is


def test_crt_stage2_starts_from_a_copy_and_freezes_the_backbone(prepared, tmp_path):
    trainer = Trainer(cfg_for(tmp_path, "method.name=crt", "method.params={retrain_epochs: 1}"), prepared)
    seen = {}
    original = trainer._train_epoch

    def spy(stage, *args):
        if stage.name == "retrain":
            m = trainer.method
            seen["copied"] = torch.equal(m.retrained.weight, m.head.weight)
            seen["backbone"] = [p.detach().clone() for p in m.backbone.parameters()]
        return original(stage, *args)

    trainer._train_epoch = spy
    trainer.fit()
    assert seen["copied"]
    for before, after in zip(seen["backbone"], trainer.method.backbone.parameters()):
        assert torch.equal(before, after)


@pytest.mark.parametrize("method, dies_at", [("ce", 3), ("crt", 4)])
def test_killed_run_resumes_exactly(prepared, tmp_path, method, dies_at):
    extra = ["method.params={retrain_epochs: 2}"] if method == "crt" else []
    full = train(cfg_for(tmp_path, f"method.name={method}", "train.epochs=3", *extra, name="full"), prepared)
    cfg = cfg_for(tmp_path, f"method.name={method}", "train.epochs=3", *extra, name="killed")
    fit_until_interrupted(Trainer(cfg, prepared), lambda stage, epoch, started: started == dies_at)
    resumed = Trainer(cfg, prepared).fit()
    assert resumed["heads"] == full["heads"]
    strip = lambda curve: [{k: v for k, v in e.items() if k not in ("seconds", "cpu_seconds")} for e in curve]  # noqa: E731
    assert strip(resumed["curve"]) == strip(full["curve"])


def test_a_checkpoint_of_another_precision_is_refused_and_the_switches_are_recorded(prepared, tmp_path):
    """train.amp=auto is float32 here and bf16 on a GPU that has it: the same config must not resume across."""
    metrics = train(cfg_for(tmp_path, "method.name=ce", "train.epochs=1"), prepared)
    assert metrics["speed"] == {"compile": "off", "amp": "off", "channels_last": True, "fused_optimizer": False}
    assert metrics["backends"] == {"cudnn_benchmark": False, "tf32": False}
    assert metrics["peak_gpu_memory_bytes"] is None
    out = tmp_path / "run"
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["speed"] == metrics["speed"]
    payload["speed"]["amp"] = "bf16"  # as written on a GPU with native bf16 under train.amp=auto
    torch.save(payload, out / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CheckpointMismatchError, match=r"was trained with amp bf16 and this run resolves train.amp=auto "
                                                      r"to off on cpu: a run never changes precision mid-way"):
        train(cfg_for(tmp_path, "method.name=ce", "train.epochs=1"), prepared)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    del payload["speed"]  # written before the switches were recorded: float32, accepted here
    torch.save(payload, out / "checkpoint.pt")
    assert train(cfg_for(tmp_path, "method.name=ce", "train.epochs=1"), prepared)["heads"] == metrics["heads"]


def test_checkpoint_from_another_config_is_refused_naming_the_keys_and_writing_nothing(prepared, tmp_path):
    train(cfg_for(tmp_path, "method.name=ce"), prepared)
    out = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CheckpointMismatchError, match=r"written by another config \(checkpoint -> now: "
                                                      r"train.batch_size: 32 -> 16; train.optim.lr: 0.1 -> 0.05\)"):
        train(cfg_for(tmp_path, "method.name=ce", "train.optim.lr=0.05", "train.batch_size=16"), prepared)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a checkpoint from before configs were stored in it: still refused, by fingerprint
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    del payload["config"]
    torch.save(payload, out / "checkpoint.pt")
    with pytest.raises(CheckpointMismatchError, match=f"fingerprint {payload['fingerprint']} != "):
        train(cfg_for(tmp_path, "method.name=ce", "train.optim.lr=0.05"), prepared)
    assert train(cfg_for(tmp_path, "method.name=ce"), prepared)["curve"] == json.loads((out / "curve.json").read_text())


def test_corrupt_checkpoint_is_reported(prepared, tmp_path):
    with RunLock(tmp_path / "run"):  # a run's folder
        (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DamagedCheckpointError, match="cannot read checkpoint .* \\(damaged: BadZipFile"):
        train(cfg_for(tmp_path, "method.name=ce"), prepared)


def test_nan_loss_is_detected(prepared, tmp_path):
    with pytest.raises(DivergenceError, match="non-finite training loss"):
        train(cfg_for(tmp_path, "method.name=ce", "train.optim.lr=1e30"), prepared)


def test_same_seed_same_result_other_seed_differs(prepared, tmp_path):
    a = train(cfg_for(tmp_path, "method.name=ce", name="a"), prepared)
    b = train(cfg_for(tmp_path, "method.name=ce", name="b"), prepared)
    c = train(cfg_for(tmp_path, "method.name=ce", "seed=1", name="c"), prepared)
    assert a["heads"] == b["heads"]
    assert a["curve"][0]["loss"] != c["curve"][0]["loss"]


def test_learning_rate_schedules():
    optim = build_config({}, ["train.optim.schedule=step", "train.optim.milestones=[160, 180]",
                              "train.optim.warmup_epochs=5", "train.epochs=200"]).train.optim
    assert learning_rate(optim, 0.2, "step", 200, 2.5) == pytest.approx(0.1)
    assert learning_rate(optim, 0.2, "step", 200, 100) == pytest.approx(0.2)
    assert learning_rate(optim, 0.2, "step", 200, 170) == pytest.approx(0.02)
    assert learning_rate(optim, 0.2, "step", 200, 190) == pytest.approx(0.002)
    cos = build_config({}, ["train.optim.schedule=cosine"]).train.optim
    assert learning_rate(cos, 0.1, "cosine", 8, 0) == pytest.approx(0.1)
    assert learning_rate(cos, 0.1, "cosine", 8, 4) == pytest.approx(0.05)
    assert learning_rate(cos, 0.1, "constant", 8, 7.9) == 0.1


RELEASE_LENET_RATES = [0.1, 0.0962, 0.0854, 0.0691, 0.05, 0.0309, 0.0146, 0.0038]


@pytest.mark.parametrize("dataset", ["mnist-lt", "cmnist-lt", "fashion-lt", "cfashion-lt"])
def test_release_cosine_epoch_rates_of_both_crt_stages(dataset):
    # docs/protocol-notes.md: epoch e trains at 0.05 (1 + cos(pi e / 8)); cRT's 4-epoch re-training uses divisor 8 too
    from tailshift.config import config_path
    from tailshift.resolve import resolve_run

    run = resolve_run(load_config(config_path(f"table1/{dataset}_crt")))
    cfg, params = run.config, run.params
    assert cfg.train.optim.schedule == "cosine_epoch" and cfg.train.optim.warmup_epochs == 0
    period = cfg.train.optim.cosine_period or cfg.train.epochs
    steps = 7  # the rate is constant within an epoch: every step of it gets the same value
    for epochs, lr, schedule, expected in ((cfg.train.epochs, cfg.train.optim.lr, cfg.train.optim.schedule, RELEASE_LENET_RATES),
                                           (params.retrain_epochs, params.retrain_lr, params.retrain_schedule, RELEASE_LENET_RATES[:4])):
        rates = [[learning_rate(cfg.train.optim, lr, schedule, epochs, e + s / steps, period) for s in range(steps)]
                 for e in range(epochs)]
        assert [round(r[0], 4) for r in rates] == expected
        assert all(len(set(r)) == 1 for r in rates)


def test_engine_trains_each_crt_epoch_at_the_release_rate(prepared, tmp_path):
    metrics = train(cfg_for(tmp_path, "method.name=crt", "train.epochs=3", "train.optim.schedule=cosine_epoch",
                            "method.params.retrain_epochs=2", "method.params.retrain_schedule=cosine_epoch"), prepared)
    rates = [round(r["lr"], 6) for r in metrics["curve"]]
    one_third = round(0.1 * 0.5 * (1 + math.cos(math.pi / 3)), 6)
    two_thirds = round(0.1 * 0.5 * (1 + math.cos(2 * math.pi / 3)), 6)
    assert rates == [0.1, one_third, two_thirds, 0.1, one_third]


def test_gradient_clipping_bounds_every_step_and_is_logged(prepared, tmp_path):
    clip, lr = 1e-4, 0.1
    cfg = cfg_for(tmp_path, "method.name=ce", "train.epochs=1", f"train.optim.clip_grad_norm={clip}", f"train.optim.lr={lr}")
    trainer = Trainer(cfg, prepared)
    before = torch.cat([p.detach().flatten().clone() for p in trainer.method.parameters()])
    metrics = trainer.fit()
    after = torch.cat([p.detach().flatten() for p in trainer.method.parameters()])
    steps = -(-len(prepared.train.labels) // 32)
    # plain SGD moves the parameters by lr x (clipped gradient) a step: at most lr x clip
    assert 0 < float((after - before).norm()) <= steps * lr * clip * 1.001
    assert metrics["curve"][0]["clipped"] == 1.0  # a fresh network's gradient is far above 1e-4
    unclipped = train(cfg_for(tmp_path, "method.name=ce", "train.epochs=1", name="plain"), prepared)
    assert "clipped" not in unclipped["curve"][0]


def test_checkpoint_with_the_legacy_fingerprint_resumes(prepared, tmp_path):
    # written before method params were resolved: the checkpoint carries the hash of the params as given
    cfg = cfg_for(tmp_path, "method.name=ce", "train.epochs=2")
    full = train(cfg_for(tmp_path, "method.name=ce", "train.epochs=2", name="full"), prepared)
    trainer = Trainer(cfg, prepared)
    fit_until_interrupted(trainer, lambda stage, epoch, started: started == 2)
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["fingerprint"] == trainer.run.fingerprint() != trainer.run.legacy_fingerprint()
    payload["fingerprint"] = trainer.run.legacy_fingerprint()
    torch.save(payload, tmp_path / "run" / "checkpoint.pt")
    assert Trainer(cfg, prepared).fit()["heads"] == full["heads"]


def test_stage_driver_is_explicit_with_several_streams():
    from tailshift.methods.base import Stage, StreamRequest

    two = {"a": StreamRequest("uniform"), "b": StreamRequest("balanced")}
    with pytest.raises(ValueError, match="stage 'x' has streams a, b: name its driver"):
        Stage("x", 1, two)
    with pytest.raises(ValueError, match="driver 'c' is not one of its streams"):
        Stage("x", 1, two, driver="c")
    assert Stage("x", 1, two, driver="b").stream_order() == ["b", "a"]
    assert Stage("x", 1, {"main": StreamRequest("uniform")}).driver == "main"


def test_warmup_opens_a_stage_only_when_it_asks():
    optim = build_config({}, ["train.optim.warmup_epochs=2", "train.optim.schedule=constant"]).train.optim
    assert learning_rate(optim, 0.2, "constant", 8, 0.5) == pytest.approx(0.05)
    assert learning_rate(optim, 0.2, "constant", 8, 0.5, warmup=False) == 0.2
    # the old rule (warm-up iff the stage's schedule is the run's) is gone: a stage's own schedule may warm up
    assert learning_rate(optim, 0.2, "cosine", 8, 0.5) == pytest.approx(0.05)


def test_optimizer_is_chosen_by_name(prepared, tmp_path):
    metrics = train(cfg_for(tmp_path, "method.name=ce", "train.optim.name=adamw", "train.optim.lr=0.001",
                            "train.optim.weight_decay=0.01"), prepared)
    assert metrics["result"]["all"] > 20
    trainer = Trainer(cfg_for(tmp_path, "method.name=ce", "train.optim.name=adamw", name="b"), prepared)
    opt = build_optimizer(trainer.method.parameters(), 0.1, trainer.cfg.train.optim)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="train.optim.name must be one of adamw, sgd; got 'lion'"):
        cfg_for(tmp_path, "method.name=ce", "train.optim.name=lion", name="c")


def test_the_engine_names_no_method_and_no_loss():
    import inspect

    import tailshift.engine as engine
    from tailshift.methods import METHODS
    from tailshift.methods.losses import LOSSES

    source = inspect.getsource(engine)
    named = [n for n in (*METHODS.names(), *LOSSES.names()) if f'"{n}"' in source or f"'{n}'" in source]
    assert named == []
