"""benchmarks/gpu_evidence.py end to end on the CPU with its tiny setting, so that its first GPU run cannot
fail for a silly reason: the speed table, the runs, their report, and a second invocation that re-reads the
finished runs instead of training them again."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

gpu_evidence = pytest.importorskip("gpu_evidence")
from tailshift.data.arrays import DataError  # noqa: E402
from tailshift.data.sources import load_dataset  # noqa: E402

try:
    load_dataset("cifar10")
    CIFAR = None
except DataError as err:
    CIFAR = str(err)


def test_help_runs():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_evidence.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--budget" in done.stdout


def test_bad_options_are_refused_in_one_line(capsys):
    for argv, message in ((["--runs", "crt,m2m"], "unknown run 'm2m'; known: crt, csa, cbrs, la, ldam-drw"),
                          (["--parallel", "0"], "--parallel must be >= 1, got 0"),
                          (["--seeds", "0,x"], "--seeds must be comma-separated integers, got '0,x'")):
        with pytest.raises(SystemExit):
            gpu_evidence.main(argv)
        assert message in capsys.readouterr().err


@pytest.mark.skipif(CIFAR is not None, reason=f"no CIFAR-10 here: {CIFAR}")
def test_tiny_setting_runs_end_to_end_and_resumes(tmp_path):
    argv = ["--tiny", "--seeds", "0", "--runs", "crt", "--parallel", "2", "--out", str(tmp_path / "out"),
            "--runs-dir", str(tmp_path / "runs")]
    states = gpu_evidence.main(argv)
    assert [s["run"] for s in states] == ["crt-seed0", "crt-seed0-amp-off"]
    assert all(s["state"] == "finished" for s in states), states
    for state in states:
        assert set(state["heads"]) == {"CE", "cRT"} and state["speed"]["amp"] == "off"
        assert 0.0 <= state["heads"]["cRT"]["all"] <= 100.0 and state["train_seconds"] > 0
    report = (tmp_path / "out" / "gpu_evidence.md").read_text()
    assert "| crt-seed0 | off | finished | 3 | cRT |" in report and "75.7" in report  # the paper's cRT beside ours
    loader = json.loads((tmp_path / "out" / "host_loader.json").read_text())["rows"]
    assert [r["feed"] for r in loader] == ["JPEG files, workers decode", "packed", "data.decode=gpu"]
    assert all(r["images"] == 16 and r["images_per_s"] > 0 for r in loader)
    # the three feed the same recipe: their mean pixels agree to a few hundredths of a standard deviation
    assert max(r["mean_normalised_pixel"] for r in loader) - min(r["mean_normalised_pixel"] for r in loader) < 0.1
    speed = json.loads((tmp_path / "out" / "gpu_epoch.json").read_text())["results"]["CE"]["eager"]
    assert speed["graphs_compiled_while_timed"] == 0 and len(speed["repeats_s"]) == 1
    stamp = (tmp_path / "runs" / "crt-seed0" / "metrics.json").stat().st_mtime_ns
    again = gpu_evidence.main([*argv, "--table-budget", "0", "--no-loader"])
    assert again == states  # finished runs are read back, not trained again
    assert (tmp_path / "runs" / "crt-seed0" / "metrics.json").stat().st_mtime_ns == stamp
