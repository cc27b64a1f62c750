"""Every shipped config resolves to what it resolved to when ``data/shipped_configs.json`` was
recorded (at a251812, before the configs and the config code were restructured): the same
fingerprint, so checkpoints written then still resume, and the same resolved values. A config
meant to change updates its entry in the same commit, saying why. A template that leaves values to the
user (``???``: ``own/*``) is recorded with the ``overrides`` that give them."""
import json
from importlib import resources
from pathlib import Path

import pytest
from conftest import import_real

from tailshift.config import load_config
from tailshift.resolve import resolve_run

RECORDED = json.loads((Path(__file__).parent / "data" / "shipped_configs.json").read_text())
FOLDER = Path(str(resources.files("tailshift") / "configs"))
SHIPPED = sorted(str(p.relative_to(FOLDER).with_suffix("")) for p in FOLDER.rglob("*.yaml")
                 if not p.relative_to(FOLDER).parts[0].startswith("_"))


def test_every_recorded_config_is_still_shipped():
    assert sorted(RECORDED) == [name for name in SHIPPED if name in RECORDED]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_shipped_config_resolves_as_recorded(name):
    library = {"timm": "timm", "clip": "open_clip"}.get(RECORDED[name]["resolved"]["model"]["name"].partition(":")[0])
    if library is not None:  # an optional extra: resolving checks that the model is there
        import_real(library)
    run = resolve_run(load_config(FOLDER / f"{name}.yaml", RECORDED[name].get("overrides", [])))
    assert run.resolved_dict() == RECORDED[name]["resolved"]
    assert run.fingerprint() == RECORDED[name]["fingerprint"]
    assert run.legacy_fingerprint() == RECORDED[name]["legacy_fingerprint"]
