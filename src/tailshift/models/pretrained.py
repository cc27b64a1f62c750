"""Pretrained weights from a local file (never downloaded): torchvision's ResNet layout,
a bare state dict of the backbone, or a tailshift run's checkpoint."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

#: torchvision ResNet name -> this package's (prefixes; "fc." is torchvision's classifier, dropped)
TORCHVISION_PREFIXES = (("conv1.", "stem.0."), ("bn1.", "stem.1."))


def _state_dict(payload, path: Path, within: str = "") -> dict[str, torch.Tensor]:
    """The weights a file holds; of a tailshift checkpoint, its backbone's under ``within`` (the target's path
    in the backbone, e.g. ``net.`` of a timm model), relative to it."""
    if isinstance(payload, dict) and isinstance(payload.get("method"), dict):  # a tailshift checkpoint
        prefix = "backbone." + within
        return {k[len(prefix):]: v for k, v in payload["method"].items() if k.startswith(prefix)}
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise ValueError(f"pretrained weights {path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in payload.items()}


def from_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet keys (conv1, bn1, layerN.M.downsample, fc) -> this package's ResNet keys."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        for old, new in TORCHVISION_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
        out[key.replace(".downsample.", ".shortcut.")] = value
    return out


def load_pretrained(target: nn.Module, path: str | Path, ignored: tuple[str, ...] = (), within: str = "") -> None:
    """Load ``path`` into ``target`` (strictly: every tensor present, of the right shape), leaving out
    the file's keys that start with one of ``ignored``; ``within``: the target's key prefix in its backbone,
    where a tailshift run's checkpoint holds it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model.pretrained {path} is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text advises weights_only=False: name what was refused instead
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = found.group(1) if found else "an object that is not a tensor or a plain container"
        raise ValueError(f"refusing to unpickle {what} from pretrained weights {path}: only tensors and plain "
                         "containers are loaded") from None
    except Exception as err:  # a truncated or foreign file: say which and why, on one line
        raise ValueError(f"cannot read pretrained weights {path}: {str(err).splitlines()[0]}") from None
    state = {k: v for k, v in _state_dict(payload, path, within).items() if not k.startswith(ignored)}
    expected = target.state_dict()
    if "conv1.weight" in state and "stem.0.weight" in expected:  # torchvision's layout into this package's ResNet
        state = from_torchvision(state)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ValueError(f"pretrained weights {path} do not fit {type(target).__name__}: {'; '.join(parts)}")
    target.load_state_dict(state)
