"""Real processes on one run folder: SIGKILLs at random moments, and a second writer (issue 12).

A tiny two-stage cRT run (both stages checkpointed every epoch) is the subject; its
uninterrupted result, trained in this process, is what every interrupted run must equal.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tailshift
from tailshift.config import load_config
from tailshift.engine import train
from tailshift.io import LOCK_NAME

SRC = str(Path(tailshift.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
PATIENCE_S = 300  # only a safety net against a hung child; nothing is timed


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config file, the uninterrupted run's metrics and weights)."""
    d = tmp_path_factory.mktemp("run_folder")
    rng = np.random.default_rng(3)
    labels = np.arange(200) % 10
    images = rng.integers(0, 60, (200, 28, 28), dtype=np.uint8)
    images[np.arange(200), 2 * labels, :] = 250  # a separable class mark
    np.savez(d / "tiny.npz", x_train=images, y_train=labels, x_test=images[:100], y_test=labels[:100])
    config = d / "crt.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": "npz", "root": str(d / "tiny.npz"), "groups": "count",
                 "longtail": {"profile": "exp", "rho": 10, "n_max": 20}},
        "method": {"name": "crt", "params": {"retrain_epochs": 2}},
        "train": {"epochs": 3, "batch_size": 8, "eval_every": 1},
        "threads": 1, "progress": False,
    }))
    reference = train(load_config(config, [f"output={d / 'reference'}"]))
    return config, reference, torch.load(d / "reference" / "checkpoint.pt", weights_only=True)["method"]


def command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tailshift.cli", "train", str(config), f"output={out}"]


def wait_for_lock(proc: subprocess.Popen, out: Path) -> bool:
    """True once ``proc`` holds the run folder's lock, False if it exited first."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if (out / LOCK_NAME).read_text().strip() == str(proc.pid):
                return True
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"train did not take the lock of {out} within {PATIENCE_S} s")


def assert_readable(out: Path) -> None:
    """Whatever a reader finds in the folder parses: the checkpoint and every JSON/YAML file."""
    if (out / "checkpoint.pt").exists():
        torch.load(out / "checkpoint.pt", weights_only=True)
    for name in ("curve.json", "metrics.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())
    if (out / "config.yaml").exists():
        assert yaml.safe_load((out / "config.yaml").read_text())["method"]["name"] == "crt"


def assert_same_as_reference(out: Path, reference: dict, weights: dict) -> None:
    metrics = json.loads((out / "metrics.json").read_text())
    strip = lambda curve: [{k: v for k, v in e.items() if k not in ("seconds", "cpu_seconds")} for e in curve]  # noqa: E731
    assert metrics["heads"] == reference["heads"]
    assert strip(metrics["curve"]) == strip(reference["curve"])
    final = torch.load(out / "checkpoint.pt", weights_only=True)["method"]
    assert final.keys() == weights.keys() and all(torch.equal(final[k], weights[k]) for k in weights)


def test_random_sigkills_then_resume_equal_an_uninterrupted_run(setup, tmp_path):
    config, reference, weights = setup
    out = tmp_path / "run"
    rng = random.Random(12)
    kills = 0
    while kills < 3:
        proc = subprocess.Popen(command(config, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait_for_lock(proc, out):
            # anywhere in: reading the checkpoint, writing config, training, saving (the reference's
            # training time bounds the delay, so the first kill lands before that run can finish)
            time.sleep(rng.uniform(0.0, reference["train_seconds"]))
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=PATIENCE_S)
        if proc.returncode == 0:
            break  # finished before the kill landed
        assert proc.returncode == -signal.SIGKILL, err.decode()
        kills += 1
        assert_readable(out)
    finished = subprocess.run(command(config, out), env=ENV, capture_output=True, timeout=PATIENCE_S)
    assert finished.returncode == 0, finished.stderr.decode()
    assert kills >= 1
    assert_same_as_reference(out, reference, weights)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))  # killed writers' temp files are gone


def test_second_writer_refuses_at_once_and_the_first_finishes(setup, tmp_path):
    config, reference, weights = setup
    out = tmp_path / "run"
    first = subprocess.Popen(command(config, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for_lock(first, out), first.communicate()[1].decode()
    first.send_signal(signal.SIGSTOP)  # hold it mid-run: the folder is certainly taken
    try:
        before = sorted(p.name for p in out.iterdir())
        second = subprocess.run(command(config, out), env=ENV, capture_output=True, timeout=PATIENCE_S)
        after = sorted(p.name for p in out.iterdir())
    finally:
        first.send_signal(signal.SIGCONT)
    err = second.stderr.decode()
    assert second.returncode == 2
    assert err == (f"tailshift: error: run folder {out} is in use by another tailshift process (pid {first.pid}); "
                   "wait for it to finish or choose another output\n")
    assert after == before
    _, first_err = first.communicate(timeout=PATIENCE_S)
    assert first.returncode == 0, first_err.decode()
    assert_same_as_reference(out, reference, weights)
