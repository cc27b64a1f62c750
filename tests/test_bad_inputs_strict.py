"""Bad inputs, second round (issue 22): YAML that is not what it looks like, data that is not what
it claims (image modes, bombs, corrupt list images, BOMs, FIFOs, huge labels), refused pickles and
damaged JSON, in the table style of ``test_bad_inputs.py``.

Each case must be refused by ``tailshift train`` with exit status 2 and one line naming the key or
file, before any training, leaving the run folder as it was. Ids starting with "issue-" are the
issue's own cases.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import write_imagenet_lt
from PIL import Image

from tailshift import cli
from tailshift.config import MAX_CONFIG_BYTES, build_config, load_config, parse_override, save_config
from tailshift.engine import Trainer
from tailshift.reproduce import reports
from test_bad_inputs import image_folder, npz, snapshot
from test_sources import _Touch

RNG = np.random.default_rng(22)

BASE = ("data: {{dataset: npz, root: {d}/base.npz, groups: count,\n"
        "       longtail: {{profile: exp, rho: 10, n_max: 12}}}}\n"
        "model: {{name: lenet2d}}\n"
        "method: {{name: cbrs}}\n"
        "train: {{epochs: 1, batch_size: 32, test_batch_size: 100, eval_every: 0}}\n"
        "threads: 1\nprogress: false\n")

BOMB = ('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_inputs_strict")
    npz(d / "base.npz", np.arange(120) % 10, np.arange(20) % 10)
    base = BASE.format(d=d)
    (d / "base.yaml").write_text(base)
    (d / "duplicate_section.yaml").write_text(base + "method:\n  params: {sampler: balanced}\n")
    (d / "duplicate_nested.yaml").write_text(base.replace("epochs: 1,", "epochs: 1, epochs: 2,"))
    (d / "bomb.yaml").write_text(BOMB)
    (d / "recursive_alias.yaml").write_text("data: &x {root: [*x]}\n")
    (d / "too_large.yaml").write_text(base + "#" * (MAX_CONFIG_BYTES - len(base)) + "\n")
    (d / "binary.yaml").write_text(base + "seed: !!binary aGVsbG8=\n")
    (d / "date.yaml").write_text(base + "seed: 2024-01-01\n")
    (d / "set.yaml").write_text(base.replace("{name: cbrs}", "!!set {cbrs}"))
    (d / "complex_key.yaml").write_text(base + "? [seed]\n: 1\n")
    (d / "latin1.yaml").write_bytes(base.encode() + "# caf\xe9\n".encode("latin-1"))
    (d / "octal.yaml").write_text(base + "seed: 010\n")
    os.mkfifo(d / "fifo.yaml")
    torch.save({"stem.0.weight": _Touch("system", d / "pwned-pretrained")}, d / "hostile.pt")
    (d / "truncated.pt").write_bytes(b"PK\x03\x04 cut short")

    npz(d / "huge_label.npz", [*(np.arange(119) % 10), 2**40], np.arange(20) % 10)
    os.mkfifo(d / "fifo")
    image_folder(d / "folder")
    for name in ("inet", "inet_corrupt", "inet_fifo", "inet_huge_label", "inet_not_image"):
        write_imagenet_lt(d / name, counts=(3, 2), test_per_class=1)
    first = (d / "inet" / "ImageNet_LT_train.txt").read_text().split()[0]
    (d / "inet_corrupt" / first).write_bytes((d / "inet_corrupt" / first).read_bytes()[:10])
    (d / "inet_fifo" / first).unlink()
    os.mkfifo(d / "inet_fifo" / first)
    (d / "inet_not_image" / first).write_text("just text\n")
    lines = (d / "inet_huge_label" / "ImageNet_LT_train.txt").read_text()
    (d / "inet_huge_label" / "train.txt").write_text(lines.replace(" 0\n", f" {2**40}\n", 1))
    return d


@dataclass
class Case:
    id: str
    args: list[str]
    fragment: str
    config: str = "{d}/base.yaml"
    prepare: Callable[[Path, Path], None] | None = None
    pixel_limit: int | None = None  # Pillow's decompression-bomb limit during the command


def bad(id: str, *args: str, fragment: str, **kw) -> Case:
    return Case(id, list(args), fragment, **kw)


CASES = [
    # --- YAML that is not what it looks like ------------------------------------------------
    bad("issue-duplicate-section", fragment="duplicate_section.yaml: duplicate key method at lines 4 and 8",
        config="{d}/duplicate_section.yaml"),
    bad("issue-seed-octal", "seed=010", fragment="override 'seed=010': seed: 010 has a leading zero"),
    bad("issue-seed-09", "seed=09", fragment="override 'seed=09': seed: 09 has a leading zero"),
    bad("issue-alias-bomb", fragment="bomb.yaml: more than 100000 values once aliases are expanded",
        config="{d}/bomb.yaml"),
    bad("issue-config-too-large", fragment=f"too_large.yaml is {MAX_CONFIG_BYTES + 1} bytes; a config may hold at "
        f"most {MAX_CONFIG_BYTES} (1 MiB)", config="{d}/too_large.yaml"),
    bad("issue-date", fragment="seed must be an integer, got '2024-01-01'", config="{d}/date.yaml"),
    bad("issue-binary", fragment="binary.yaml: the tag 'tag:yaml.org,2002:binary' at line 8, column 7 (key seed) "
        "is not allowed", config="{d}/binary.yaml"),
    bad("duplicate-nested-key", fragment="duplicate_nested.yaml: duplicate key train.epochs at lines 5 and 5",
        config="{d}/duplicate_nested.yaml"),
    bad("octal-in-file", fragment="octal.yaml: seed: 010 has a leading zero", config="{d}/octal.yaml"),
    bad("negative-leading-zero", "train.epochs=-01", fragment="train.epochs: -01 has a leading zero"),
    bad("recursive-alias", fragment="recursive_alias.yaml: the config is nested too deeply (or an alias holds itself)",
        config="{d}/recursive_alias.yaml"),
    bad("set-tag", fragment="set.yaml: the tag 'tag:yaml.org,2002:set' at line 4, column 9 (key method) "
        "is not allowed", config="{d}/set.yaml"),
    bad("complex-key", fragment="complex_key.yaml: the top level: a key at line 8 is not a plain name",
        config="{d}/complex_key.yaml"),
    bad("config-not-utf8", fragment="latin1.yaml is not UTF-8 text (invalid continuation byte at byte",
        config="{d}/latin1.yaml"),
    bad("config-fifo", fragment="config file {d}/fifo.yaml is not a regular file", config="{d}/fifo.yaml"),
    bad("override-binary", "data.root=!!binary aGk=", fragment="(key data.root) is not allowed"),
    bad("override-timestamp", "seed=!!timestamp 2024-01-01", fragment="(key seed) is not allowed"),
    bad("override-python-tag", "seed=!!python/name:os.system", fragment="python/name:os.system' at line 1"),
    bad("override-nested-too-deeply", "train.epochs=" + "[" * 3000 + "]" * 3000,
        fragment="train.epochs is nested too deeply"),
    bad("yes-is-not-true", "progress=yes", fragment="progress must be true or false, got 'yes'"),
    bad("underscore-number", "train.epochs=1_000", fragment="train.epochs must be an integer, got '1_000'"),
    bad("sexagesimal-number", "train.epochs=1:30", fragment="train.epochs must be an integer, got '1:30'"),
    # --- data that is not what it claims ---------------------------------------------------------
    bad("issue-data-root-fifo", "data.root={d}/fifo",
        fragment="data.root {d}/fifo is a named pipe (FIFO), not a file or folder"),
    bad("issue-label-2-to-the-40-npz", "data.root={d}/huge_label.npz",
        fragment="huge_label.npz: training split: label 1099511627776 is beyond the 1,000,000 classes"),
    bad("issue-label-2-to-the-40-list", "data.dataset=filelist", "data.root={d}/inet_huge_label",
        "data.train_list={d}/inet_huge_label/train.txt", "data.test_list={d}/inet_huge_label/ImageNet_LT_test.txt",
        fragment="train.txt:1: label 1099511627776 is out of range (0..999999, the classes tailshift takes)"),
    bad("issue-list-corrupt-image", "data.dataset=imagenet-lt", "data.root={d}/inet_corrupt",
        fragment="ImageNet_LT_train.txt:1: image 'train/n00000000/n00000000_0.JPEG' is not a readable image"),
    bad("issue-folder-bomb", "data.dataset=folder", "data.root={d}/folder", pixel_limit=500,
        fragment="cannot read image {d}/folder/train/a/0.png: Image size (784 pixels) exceeds limit of 500 pixels"),
    bad("folder-bomb-twice-the-limit", "data.dataset=folder", "data.root={d}/folder", pixel_limit=300,
        fragment="cannot read image {d}/folder/train/a/0.png: Image size (784 pixels) exceeds limit of 600 pixels"),
    bad("issue-list-bomb", "data.dataset=imagenet-lt", "data.root={d}/inet", pixel_limit=1000,
        fragment="ImageNet_LT_train.txt:1: image 'train/n00000000/n00000000_0.JPEG' is refused: Image size (1920 "
        "pixels) exceeds limit of 1000 pixels"),
    bad("list-entry-fifo", "data.dataset=imagenet-lt", "data.root={d}/inet_fifo",
        fragment="ImageNet_LT_train.txt:1: 'train/n00000000/n00000000_0.JPEG' under {d}/inet_fifo is a named pipe "
        "(FIFO), not an image"),
    bad("list-entry-not-an-image", "data.dataset=imagenet-lt", "data.root={d}/inet_not_image",
        fragment="ImageNet_LT_train.txt:1: image 'train/n00000000/n00000000_0.JPEG' is not a readable image"),
    bad("data-root-device", "data.root=/dev/null", fragment="data.root /dev/null is a character device"),
    bad("list-root-fifo", "data.dataset=imagenet-lt", "data.root={d}/fifo",
        fragment="data.root {d}/fifo is a named pipe (FIFO), not a file or folder"),
    bad("train-list-fifo", "data.dataset=filelist", "data.root={d}/inet", "data.train_list={d}/fifo",
        "data.test_list={d}/inet/ImageNet_LT_test.txt", fragment="data.train_list {d}/fifo is not a file"),
    # --- messages: refused pickles ------------------------------------------------------------
    bad("issue-pretrained-refused-pickle", "model.name=resnet10", "model.pretrained={d}/hostile.pt",
        fragment="refusing to unpickle posix.system from pretrained weights {d}/hostile.pt"),
    bad("pretrained-truncated", "model.name=resnet10", "model.pretrained={d}/truncated.pt",
        fragment="cannot read pretrained weights {d}/truncated.pt: "),
    bad("merge-key-is-a-key", "method.params={{<<: {{q: 1}}}}", fragment="unknown method.params.<<"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_before_any_work(case, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    if case.prepare:
        case.prepare(out, data)
    monkeypatch.setattr(Trainer, "_fit", lambda *a: pytest.fail("training started"))
    if case.pixel_limit:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", case.pixel_limit)
    subs = {"d": data, "out": out}
    args = ["train", case.config.format(**subs), f"output={out}", *(a.format(**subs) for a in case.args)]
    before = snapshot(out)
    code = cli.main(args)
    after = snapshot(out)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tailshift: error: ") and err.count("\n") == 1, err
    assert case.fragment.format(**subs) in err
    assert "weights_only" not in err  # never the advice to switch the pickle guard off
    assert after == before  # nothing new, nothing changed
    assert not list(data.glob("pwned*"))  # no hostile file ran


def test_a_damaged_paper_yaml_is_named(tmp_path, monkeypatch):
    (tmp_path / "paper.yaml").write_text("table2: {cifar10-lt: [1, 2\n")
    monkeypatch.setattr(reports.resources, "files", lambda package: tmp_path)
    with pytest.raises(ValueError, match=f"cannot read {tmp_path}/paper.yaml: while parsing a flow sequence"):
        reports.paper_numbers()


# ----------------------------------------------------------------------------- what YAML 1.2 accepts

def test_yaml_1_2_numbers_and_words():
    values = build_config({}, ["seed=0o10", "train.optim.lr=1e-3", "train.optim.weight_decay=.5", "data.root=yes",
                               "output=2024-01-01"])
    assert values.seed == 8 and values.train.optim.lr == 1e-3 and values.train.optim.weight_decay == 0.5
    assert values.data.root == "yes" and values.output == "2024-01-01"
    assert parse_override("a=0x1F") == (["a"], 31)
    assert parse_override("a=[.inf, -.Inf, ~, 0, -0, +5]") == (["a"], [float("inf"), float("-inf"), None, 0, 0, 5])


def test_a_bom_and_aliases_within_bounds_are_fine(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + b"train: &t {epochs: 3}\nseed: 7\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 3 and cfg.seed == 7


def test_saved_config_quotes_strings_either_yaml_would_misread(tmp_path):
    for root in ("1e5", "yes", "010", "2024-01-01", "0x1F"):
        cfg = build_config({"data": {"root": root}})
        save_config(cfg, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml").data.root == root


# ----------------------------------------------------------------------------- reproduce: refused before the first run

REPRODUCE = "table1 --datasets fashion-lt --seeds 1"

REPRODUCE_CASES = [
    bad("issue-scoped-override-invalid", *REPRODUCE.split(), "crt:method.params.retrain_epochs=0",
        fragment="run fashion-lt/crt/seed0: method.params.retrain_epochs must be >= 1, got 0"),
    bad("issue-seed-range-past-the-maximum", "table1", "--datasets", "fashion-lt", "--seeds", "4294967290-4294967299",
        fragment="seeds must be in [0, 4294967295], got 4294967290 .. 4294967299"),
    bad("issue-workers-minus-2", *REPRODUCE.split(), "--workers", "-2",
        fragment="--workers must be >= 1 (or left out: one per core), got -2"),
    bad("workers-0", *REPRODUCE.split(), "--workers", "0", fragment="--workers must be >= 1"),
    bad("scoped-override-unknown-param", *REPRODUCE.split(), "crt:method.params.volume=3",
        fragment="run fashion-lt/crt/seed0: unknown method.params.volume for"),
    bad("scoped-override-leading-zero", *REPRODUCE.split(), "cbrs:train.epochs=010",
        fragment="run fashion-lt/cbrs/seed0: override 'train.epochs=010': train.epochs: 010 has a leading zero"),
    bad("global-override-invalid", *REPRODUCE.split(), "train.epochs=0",
        fragment="run fashion-lt/cbrs/seed0: train.epochs must be >= 1, got 0"),
    bad("ablation-workers-0", "ablations", "--study", "fashion-lt", "--seeds", "1", "--workers", "0",
        fragment="--workers must be >= 1"),
]


@pytest.mark.parametrize("case", REPRODUCE_CASES, ids=[c.id for c in REPRODUCE_CASES])
def test_reproduce_refuses_before_the_first_run(case, tmp_path, capsys, monkeypatch):
    import tailshift.reproduce.jobs as jobs

    monkeypatch.setattr(jobs, "run_jobs", lambda *a: pytest.fail("a run started"))
    out = tmp_path / "study"
    code = cli.main(["reproduce", *case.args, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tailshift: error: ") and err.count("\n") == 1, err
    assert case.fragment in err
    assert not out.exists()


@pytest.mark.parametrize("seeds", ["1000000000", "0-1000000000"])
def test_a_huge_seed_count_is_refused_before_a_list_is_made(seeds, capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "table1", "--seeds", seeds])
    assert "a study takes at most 10000" in capsys.readouterr().err


def test_nproc_0_is_refused_before_the_first_run(tmp_path, monkeypatch):
    import tailshift.reproduce.jobs as jobs
    from tailshift.reproduce.table1 import TABLE1

    monkeypatch.setattr(jobs, "run_jobs_distributed", lambda *a: pytest.fail("a run started"))
    with pytest.raises(ValueError, match=r"--nproc must be >= 1 \(processes per run\), got 0"):
        TABLE1.run(["fashion-lt"], 1, None, tmp_path / "study", [], nproc=0)
    assert not (tmp_path / "study").exists()
