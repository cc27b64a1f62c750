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


#: the library a model family's name is checked with when a config resolves
LIBRARIES = {"clip": "open_clip", "timm": "timm"}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_shipped_config_resolves_as_recorded(name):
    cfg = load_config(FOLDER / f"{name}.yaml", RECORDED[name].get("overrides", []))
    family = cfg.model.name.partition(":")[0]
    if family in LIBRARIES:
        import_real(LIBRARIES[family])
    run = resolve_run(cfg)
    assert run.resolved_dict() == RECORDED[name]["resolved"]
    assert run.fingerprint() == RECORDED[name]["fingerprint"]
    assert run.legacy_fingerprint() == RECORDED[name]["legacy_fingerprint"]
