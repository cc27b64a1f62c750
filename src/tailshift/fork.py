"""A finished run's later stages trained again under other settings (``tailshift fork``).

Kang et al. (2020) learn one representation and compare classifiers on it. A decoupled run's first
stage is its whole cost (200 CIFAR epochs) and its second a few minutes, so trying another stage-2
recipe should not retrain the first. ``fork`` starts a new run folder at the start of the source's
``Method.fork_stage``: the source's weights and curve up to that stage, under the new config. The new
run is the one a whole run of its config would be, because

- the configs may differ only in the method's ``fork_params`` (read by no earlier stage) and in what
  the fingerprint leaves out (output, device, threads), so the earlier stages trained the same;
- the source's later stages must have left the earlier ones' state as it was (``Method.fork_blocker``),
  and the fork stage sets up what it trains when it starts (``begin_stage`` with ``fresh``);
- every random draw of a stage is derived from (seed, stage, epoch), so the stage trains as it would
  have after the earlier ones in one run.

The new folder's checkpoint carries the new config's fingerprint: ``tailshift train`` with that config
resumes it, and ``fork.json`` says where it came from.
"""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig, build_config, config_differences, config_fingerprint, load_config, read_yaml
from .distributed import launched
from .engine import Trainer
from .io import RunLock, atomic_write_json
from .methods import METHODS
from .resolve import ResolvedRun, resolve_run
from .saved_run import read_run_checkpoint
from .validation import ConfigError


def fork_run(source: str | Path, output: str | Path, overrides: list[str] = ()) -> dict:
    """Train ``output`` as ``source``'s config with ``overrides`` from ``source``'s state at the start of its
    method's fork stage; returns its metrics (``engine.train``'s). ``output`` already holding a checkpoint is
    resumed (an interrupted fork); another run's checkpoint there is refused, naming the keys."""
    source = Path(source)
    if not (source / "config.yaml").is_file() or not (source / "checkpoint.pt").is_file():
        raise ValueError(f"run folder {source} has no config.yaml and checkpoint.pt: fork needs a run trained with "
                         "train.checkpoint=true")
    before = resolve_run(load_config(source / "config.yaml"))
    after = resolve_run(_fork_config(source, before, [*overrides, f"output={output}"]))
    method_class, stage = before.method_class, before.method_class.fork_stage
    if stage is None:
        raise ValueError(f"method {before.config.method.name} has no stage to fork at: only a method whose later "
                         "stages train apart from its first (crt, lws, tau-norm) can be forked")
    _check_only_fork_settings_differ(before, after)
    payload = read_run_checkpoint(source, before, "forked from", "re-train the source run", "restore it")
    reached = (payload["stage_index"], payload["epoch"])
    if reached < (stage, 0):
        raise ValueError(f"the run in {source} has not reached stage {stage} (counted from 0), where a fork starts: "
                         f"its checkpoint is at stage {reached[0]}, epoch {reached[1]}; resume it first")
    with launched(after.config.device) as world:
        if world.size > 1:
            raise ValueError("tailshift fork runs in one process: run it without torchrun")
        trainer = Trainer(after, world=world)
        if not trainer.checkpoint_path.exists():
            if reached > (stage, 0):
                blocker = method_class.fork_blocker(before.params)
                if blocker is not None:
                    raise ValueError(f"the run in {source} cannot be forked: {blocker}")
            with RunLock(trainer.out):  # written as a run writes its folder: then it is a run's, and resumes
                trainer.write_fork_checkpoint(payload, stage, source / "checkpoint.pt")
                atomic_write_json(trainer.out / "fork.json", {
                    "source": str(source.resolve()), "source_fingerprint": payload["fingerprint"],
                    "stage_index": stage, "overrides": list(overrides)})
        return trainer.fit(resume=True)


def _fork_config(source: Path, before: ResolvedRun, overrides: list[str]) -> RunConfig:
    """The source's config with ``overrides``; a fork into another method of the family starts from that
    method's own later-stage settings (the source's ``fork_params`` dropped), not from the source's."""
    values = read_yaml(source / "config.yaml")  # as save_config wrote it: no _base_ files
    forked = build_config(values, overrides)
    if forked.method.name == before.config.method.name:
        return forked
    params = values.get("method", {}).get("params") or {}
    values.setdefault("method", {})["params"] = {name: value for name, value in params.items()
                                                 if name not in before.method_class.fork_params}
    return build_config(values, overrides)


def _check_only_fork_settings_differ(before: ResolvedRun, after: ResolvedRun) -> None:
    """Refuse, naming the keys, a fork whose config differs from the source's in what the stages before the
    fork stage read: the method may change within its family, and the params either method lists in
    ``fork_params`` are free; every other param must be the source's, and every other key too."""
    old, new = before.method_class, after.method_class
    if _kin(new) != _kin(old):
        family = [name for name in METHODS.names() if _kin(METHODS.get(name)) == _kin(old)]
        raise ConfigError(f"method.name={after.config.method.name}: a fork of a {before.config.method.name} run may "
                          f"be a run of {', '.join(family)} only (the methods whose earlier stages train alike)")
    free = list(dict.fromkeys([*old.fork_params, *new.fork_params]))
    source, masked = before.resolved_dict(), after.resolved_dict()
    was, now = source["method"]["params"], masked["method"]["params"]
    changed = [f"method.params.{name}: {was.get(name, '(none)')} -> {now.get(name, '(none)')}"
               for name in sorted((set(was) | set(now)) - set(free))
               if (name in was, was.get(name)) != (name in now, now.get(name))]
    masked["method"] = source["method"]  # the params compared above; the method's name may change in the family
    allowed = [f"method.params.{name}" for name in free]
    # the one engine option a later stage may read alone: cosine_epoch's divisor (``engine.learning_rate``), which
    # a stage on the run's own schedule reads only if that schedule is cosine_epoch
    if source["train"]["optim"]["schedule"] != "cosine_epoch":
        masked["train"]["optim"]["cosine_period"] = source["train"]["optim"]["cosine_period"]
        allowed.append("train.optim.cosine_period")
    params_class = type(before.params)
    if config_fingerprint(masked, params_class) != config_fingerprint(source, params_class):
        changed += config_differences(source, masked, params_class)
    if changed:
        raise ConfigError(f"a fork may change only what its stage {old.fork_stage} on reads "
                          f"({', '.join(allowed)}), not {'; '.join(changed)}")


def _kin(method_class) -> tuple:
    """What a fork may change the method within: its family and fork stage (a method of no family: itself)."""
    return method_class.fork_family or method_class, method_class.fork_stage
