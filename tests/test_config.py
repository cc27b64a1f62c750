import re

import pytest

from tailshift.config import ConfigError, build_config, load_config, parse_override
from tailshift.engine import Trainer
from tailshift.config import config_path
from tailshift.registry import UnknownNameError
from tailshift.resolve import resolve_run


def test_defaults_and_overrides():
    cfg = build_config({}, ["train.epochs=3", "train.optim.lr=0.05", "data.group_bounds=[2, 5]", "method.params={q: 0.5}"])
    assert cfg.train.epochs == 3 and cfg.train.optim.lr == 0.05
    assert cfg.data.group_bounds == (2, 5)
    assert cfg.method.params == {"q": 0.5}


def test_shipped_table1_configs_load():
    cfg = load_config(config_path("table1/fashion-lt_crt"))
    assert cfg.method.name == "crt" and cfg.data.longtail.rho == 100 and cfg.train.optim.schedule == "cosine_epoch"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.longtail.rho=0.5", "data.longtail.rho must be >= 1, got 0.5"),
        ("train.epochs=0", "train.epochs must be >= 1, got 0"),
        ("train.optim.schedule=linear", "train.optim.schedule must be one of bbn_multistep, constant, cosine, cosine_epoch, step; got 'linear'"),
        ("data.context.palette=viridis", "data.context.palette must be one of tab10, deep; got 'viridis'"),
        ("train.optim.cosine_period=0", r"train.optim.cosine_period must be >= 1 \(or null: train.epochs\), got 0"),
        ("train.epochs=two", "train.epochs must be an integer, got 'two'"),
        ("data.colour=1", "unknown key data.colour; known: dataset, root"),
        ("data.context.noise=1.5", r"data.context.noise must be in \[0, 1\), got 1.5"),
        ("train.optim.clip_grad_norm=-1", r"train.optim.clip_grad_norm must be >= 0 \(0: off\), got -1"),
        ("device=tpu", "device must be auto, cpu or cuda"),
        ("data.mean=[0.5]", "data.mean and data.std must be given together"),
    ],
)
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_config({}, [override])
    assert "\n" not in str(err.value)


def test_override_syntax():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_override("train.epochs")


@pytest.mark.parametrize(
    "override, message",
    [("data.dataset=imagenet-21k", "unknown dataset 'imagenet-21k'; known: cifar10"),
     ("model.name=vit", "unknown model 'vit'; known: lenet2d"),
     ("method.name=magic", "unknown method 'magic'; known: bbn, bcl, cam-bs, cbrs, ce, cmo, crt")],
)
def test_unknown_names_list_the_known_ones(override, message, tmp_path):
    # refused when the config is resolved, before any data is read
    cfg = build_config({"output": str(tmp_path)}, [override])
    with pytest.raises(UnknownNameError, match=message):
        resolve_run(cfg)
    with pytest.raises(UnknownNameError, match=message):
        Trainer(cfg)


def test_q_outside_unit_interval_is_refused_when_the_config_is_resolved(tmp_path):
    with pytest.raises(ConfigError, match=r"method.params.q must be in \[0, 1\], got 2.0"):
        resolve_run(build_config({"output": str(tmp_path)}, ["method.name=resample", "method.params={q: 2.0}"]))


def test_missing_data_path_is_reported(tmp_path):
    cfg = build_config({"output": str(tmp_path)}, ["data.dataset=mnist", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(ValueError, match="nowhere"):
        Trainer(cfg)


def test_unknown_config_name_lists_shipped_ones():
    with pytest.raises(ValueError, match="known: .*lift/cifar100-lt_lift, .*own/cnn_ce, .*table1/cfashion-lt_cbrs"):
        config_path("table9/nothing")


def test_options_added_later_keep_older_fingerprints_at_their_neutral_value():
    # recorded before train.optim.clip_grad_norm existed (commit 56849d5): its runs must stay resumable
    from tailshift.config import config_path

    # (the config of that time: a constant rate; its coloured twins used seaborn "deep", the neutral palette)
    run = resolve_run(load_config(config_path("table1/fashion-lt_ce"),
                                  ["train.optim.schedule=constant", "data.context.palette=deep"]))
    # checkpoints of that time carry the fingerprint of the params as given; they still resume (test_engine)
    assert run.legacy_fingerprint() == "cb89157a65fcd9be"
    # since the method params are hashed resolved (every default filled in), the fingerprint a run
    # writes is this one: pinned, so that a change to it is deliberate
    assert run.fingerprint() == "8d4a4690ce86a1e8"
    for later in ("data.context.palette=tab10", "train.optim.clip_grad_norm=5", "train.optim.name=adamw",
                  "train.optim.betas=[0.8, 0.99]", "model.readout=token"):
        changed = resolve_run(build_config(run.config.to_dict(), [later]))
        assert changed.fingerprint() != run.fingerprint()
        assert changed.legacy_fingerprint() != run.legacy_fingerprint()
    for neutral in ("train.optim.betas=[0.9, 0.999]", "train.optim.name=sgd", "data.storage=auto",
                    "model.readout=avg"):  # spelled out
        assert resolve_run(build_config(run.config.to_dict(), [neutral])).legacy_fingerprint() == run.legacy_fingerprint()


def _fingerprint(*overrides):
    return resolve_run(build_config({}, list(overrides))).fingerprint()


def test_opting_into_outside_paths_does_not_change_the_fingerprint():
    assert _fingerprint("data.allow_outside_root=true") == _fingerprint()


def test_where_and_how_a_run_is_written_or_shown_never_counts():
    for unhashed in ("output=elsewhere", "progress=false", "threads=2", "device=cpu", "train.tensorboard=true",
                     "data.workers=0", "train.compile=off", "train.channels_last=off", "train.fused_optimizer=on"):
        assert _fingerprint(unhashed) == _fingerprint(), unhashed
    assert _fingerprint("seed=1") != _fingerprint()


def test_config_differences_name_each_shaping_key_with_both_values():
    from tailshift.config import config_differences

    old = build_config({}, ["method.name=resample"]).to_dict()
    new = build_config({}, ["method.name=resample", "method.params.q=0.5", "output=elsewhere", "seed=2"]).to_dict()
    assert config_differences(old, new) == ["method.params.q: (unset) -> 0.5", "seed: 0 -> 2"]


def test_large_scale_options_keep_fingerprints_and_workers_never_count():
    older = ["train.optim.schedule=constant", "data.context.palette=deep"]  # the config behind the pinned fingerprint
    cfg = load_config(config_path("table1/fashion-lt_ce"), older)
    fingerprint = resolve_run(cfg).fingerprint()
    assert resolve_run(build_config(cfg.to_dict(), ["data.workers=16"])).fingerprint() == fingerprint
    for changed in ("data.storage=host", "data.class_order=count", "train.sync_batchnorm=true",
                    "data.color_jitter=0.2", "model.pretrained=w.pth"):
        assert resolve_run(build_config(cfg.to_dict(), [changed])).fingerprint() != fingerprint, changed


@pytest.mark.parametrize("override, message", [
    ("data.storage=disk", "data.storage must be one of auto, device, host; got 'disk'"),
    ("data.class_order=alpha", "data.class_order must be one of list, count; got 'alpha'"),
    ("data.workers=-1", "data.workers must be >= 0 (0: decode in the training process), got -1"),
    ("data.resize_size=200", "data.resize_size must be >= data.crop_size (224), got 200"),
    ("data.color_jitter=1.5", "data.color_jitter must be in [0, 1) (0: off), got 1.5"),
    ("data.augment=autoaugment", "data.augment must be one of none, crop_flip, resized_crop"),
])
def test_large_scale_options_are_checked(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config({}, [override])


def test_the_old_storage_name_stream_is_refused_in_one_line():
    # data.storage=host was called "stream" before: a config still saying so fails, listing the allowed values
    for given in ({"data": {"storage": "stream"}}, ["data.storage=stream"]):
        with pytest.raises(ConfigError) as err:
            build_config(given, []) if isinstance(given, dict) else build_config({}, given)
        assert str(err.value) == "data.storage must be one of auto, device, host; got 'stream'"


def test_fingerprint_hashes_resolved_method_params():
    # Figure 8's "U(0, 1)" row spells out CSA's defaults: it is the base CSA run, not a retrain
    from tailshift.config import config_path

    def csa(*overrides):
        return resolve_run(load_config(config_path("table2/cifar100-lt_csa"), list(overrides)))

    base = csa()
    spelled = csa("method.params.lam_distribution=uniform", "method.params.lam_a=0.0", "method.params.lam_b=1.0")
    assert spelled.fingerprint() == base.fingerprint()
    assert spelled.legacy_fingerprint() != base.legacy_fingerprint()
    assert csa("method.params.lam_b=0.5").fingerprint() != base.fingerprint()
    # a param added later, spelled out at its neutral value, changes neither fingerprint
    for neutral in ("method.params.joint_forward=false", "method.params.balanced_q=0.0"):
        assert csa(neutral).fingerprint() == base.fingerprint()
        assert csa(neutral).legacy_fingerprint() == base.legacy_fingerprint()
    assert csa("method.params.joint_forward=true").fingerprint() != base.fingerprint()


def test_resolved_params_are_one_typed_object_with_every_default():
    run = resolve_run(load_config(config_path("table2/cifar100-lt_csa"), ["method.params.delta=0.5"]))
    assert run.method_class.__name__ == "ContextShiftAugmentation" and isinstance(run.params, run.method_class.Params)
    assert run.params.delta == 0.5 and run.params.mask_power == 2.0
    assert run.resolved_dict()["method"]["params"]["mask_power"] == 2.0
    assert run.config.to_dict()["method"]["params"] == {**run.config.method.params}  # as given, no defaults


def test_config_is_frozen_with_tuples_inside_and_plain_lists_outside(tmp_path):
    from dataclasses import FrozenInstanceError

    from tailshift.config import save_config

    cfg = build_config({}, ["data.mean=[0.5]", "data.std=[0.25]", "train.optim.milestones=[3, 6]"])
    assert cfg.data.mean == (0.5,) and cfg.train.optim.milestones == (3, 6) and cfg.train.optim.betas == (0.9, 0.999)
    with pytest.raises(FrozenInstanceError):
        cfg.train.epochs = 2
    assert hash(cfg.data) == hash(build_config({}, ["data.mean=[0.5]", "data.std=[0.25]"]).data)
    values = cfg.to_dict()
    assert values["data"]["mean"] == [0.5] and values["train"]["optim"]["betas"] == [0.9, 0.999]
    assert values["train"]["optim"]["milestones"] == [3, 6]
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "milestones:\n    - 3\n    - 6\n" in text and "!!python" not in text
    assert load_config(tmp_path / "config.yaml") == cfg


def test_a_list_rule_names_the_list():
    with pytest.raises(ConfigError, match=re.escape("data.std must hold numbers > 0, got [0.5, -1.0]")):
        build_config({}, ["data.mean=[0.5, 0.5]", "data.std=[0.5, -1]"])
    with pytest.raises(ConfigError, match=re.escape("data.group_bounds must be [b1, b2] with b1 <= b2, got [5, 2]")):
        build_config({}, ["data.group_bounds=[5, 2]"])


def test_bases_merge_in_order_deeply_under_the_file_and_the_overrides(tmp_path):
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "data.yaml").write_text("data: {dataset: cifar10, longtail: {rho: 50, n_max: 5000}}\n")
    (tmp_path / "_base_" / "recipe.yaml").write_text(
        "train: {epochs: 20, optim: {lr: 0.1, momentum: 0.9, milestones: [5]}}\n")
    (tmp_path / "_base_" / "later.yaml").write_text("_base_: [recipe.yaml]\ntrain: {optim: {lr: 0.3}}\n")
    row = tmp_path / "rows" / "row.yaml"
    row.parent.mkdir()
    row.write_text("_base_: [../_base_/data.yaml, ../_base_/later.yaml]\ndata: {longtail: {rho: 10}}\n"
                   "train: {epochs: 30}\n")
    cfg = load_config(row, ["train.optim.momentum=0.5"])
    assert (cfg.data.dataset, cfg.data.longtail.rho, cfg.data.longtail.n_max) == ("cifar10", 10, 5000)
    assert (cfg.train.epochs, cfg.train.optim.lr, cfg.train.optim.momentum) == (30, 0.3, 0.5)
    assert cfg.train.optim.milestones == (5,)
    assert "_base_" not in cfg.to_dict()
    spelled_out = tmp_path / "flat.yaml"
    spelled_out.write_text("data: {dataset: cifar10, longtail: {rho: 10, n_max: 5000}}\n"
                           "train: {epochs: 30, optim: {lr: 0.3, momentum: 0.5, milestones: [5]}}\n")
    assert load_config(spelled_out) == cfg


def test_base_files_are_not_runnable_configs_by_name():
    from tailshift.config import shipped_configs

    assert config_path("table2/cifar10-lt_ce").name == "cifar10-lt_ce.yaml"
    assert not [name for name in shipped_configs() if name.startswith("_")]
    with pytest.raises(ValueError, match="not a shipped config"):
        config_path("_base_/recipes/csa-release")


def test_per_rho_values_go_over_the_file_and_under_the_overrides_then_vanish(tmp_path):
    row = tmp_path / "row.yaml"
    row.write_text("seed: 1\ntrain: {epochs: 30, optim: {lr: 0.3}}\n"
                   'per_rho:\n  "50": {seed: 5, train: {optim: {lr: 0.5}}}\n  "10.0": {seed: 10}\n')
    assert (load_config(row).seed, load_config(row).train.optim.lr) == (1, 0.3)  # rho 100: the file's own
    rho50 = load_config(row, ["data.longtail.rho=50"])
    assert (rho50.seed, rho50.train.optim.lr, rho50.train.epochs) == (5, 0.5, 30)  # merged deeply
    assert load_config(row, ["data.longtail.rho=10"]).seed == 10
    assert load_config(row, ["data.longtail.rho=50", "seed=7"]).seed == 7  # an override wins
    assert load_config(row, ["per_rho.20.seed=20", "data.longtail.rho=20"]).seed == 20  # per_rho can be overridden
    assert "per_rho" not in rho50.to_dict()
    assert load_config(row) == build_config({"seed": 1, "train": {"epochs": 30, "optim": {"lr": 0.3}}})


@pytest.mark.parametrize("per_rho, message", [
    ("[1]", "per_rho must map imbalance ratios to config values, got [1]"),
    ("{fifty: {}}", "per_rho: key 'fifty' is not an imbalance ratio (a number >= 1)"),
    ("{0.5: {}}", "per_rho: key '0.5' is not an imbalance ratio (a number >= 1)"),
    ("{50: 3}", "per_rho.50 must be a mapping of config values, got 3"),
    ("{50: {data: {longtail: {rho: 10}}}}", "per_rho.50 may not set data.longtail.rho (it is chosen by it)")])
def test_bad_per_rho_is_refused_in_one_line(per_rho, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config({}, [f"per_rho={per_rho}"])
