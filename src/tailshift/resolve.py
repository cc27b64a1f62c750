"""A config resolved against what is registered, before any data is read.

``resolve_run`` checks the dataset, model and method names and builds the method's params once
into its ``Params`` (every default filled in). That one object is what the method is built with
and what the fingerprint hashes, so a config that spells out a default trains, and resumes, as
the one that leaves it out. It sits above ``config`` and ``methods``, which know nothing of each
other; the engine, saved runs and the reproduction commands resolve through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import RunConfig, config_differences, config_fingerprint, plain
from .data.sources import DATASETS
from .methods import METHODS, Method
from .models import MODELS
from .models.base import MAP_READOUTS
from .tensorboard_log import require_tensorboard
from .validation import ConfigError, build_params


@dataclass(frozen=True)
class ResolvedRun:
    """A run config with its method class and the method's resolved params."""

    config: RunConfig
    method_class: type[Method]
    params: Any  # an instance of ``method_class.Params``

    def resolved_dict(self) -> dict:
        """``config.to_dict()`` with the method's params as resolved."""
        values = self.config.to_dict()
        values["method"]["params"] = plain(self.params)
        return values

    def fingerprint(self) -> str:
        """Hash of everything that shapes the trained model (not where it is written or how it is
        shown), the method's params resolved. Options added after runs were recorded are left out
        at the value that reproduces the older behaviour, so those runs' checkpoints still match."""
        return config_fingerprint(self.resolved_dict(), type(self.params))

    def legacy_fingerprint(self) -> str:
        """The fingerprint as written before method params were resolved (the params as given):
        checkpoints written then carry it, and still resume under the same config."""
        return config_fingerprint(self.config.to_dict(), type(self.params))

    def accepted_fingerprints(self) -> tuple[str, str]:
        """The fingerprints a checkpoint of this run may carry: today's and the legacy one."""
        return self.fingerprint(), self.legacy_fingerprint()

    def differences(self, stored: dict) -> list[str]:
        """``key: stored -> now`` for each option that shapes the model and differs from ``stored``
        (the config a checkpoint was written with)."""
        return config_differences(stored, self.config.to_dict(), type(self.params))


def resolve_run(cfg: RunConfig) -> ResolvedRun:
    """``cfg`` checked against the registries (an unknown name lists the known ones) and its method's
    params built and checked (one-line ``ConfigError``); a method that reads the feature map is refused under a
    readout the map does not determine; train.tensorboard needs TensorBoard installed."""
    if cfg.train.tensorboard:
        require_tensorboard()
    DATASETS.get(cfg.data.dataset)
    MODELS.get(cfg.model.name)
    method_class = METHODS.get(cfg.method.name)
    if method_class.reads_feature_map and cfg.model.readout not in MAP_READOUTS:
        raise ConfigError(f"model.readout={cfg.model.readout}: method {cfg.method.name} reads the patch grid "
                          f"({method_class.reads_feature_map}); use model.readout=avg")
    return ResolvedRun(cfg, method_class, build_params(method_class, cfg.method.params))
