"""Bad run folders and checkpoints, and interruptions (issue 22): one table per command.

Each table case must be refused with exit status 2 and one line naming the file or folder and what
to do, before any training or scoring, leaving the folder as it was. Cases whose id starts with
"issue-" are the ones the issue found failing. The signal tests check Ctrl-C, a full disk and the
death of a study's parent.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tailshift import cli
from tailshift.engine import Trainer
from test_bad_inputs import npz, snapshot, write_base_config

TWO_EPOCHS = ["train.epochs=2", "train.eval_every=0"]


def interrupt_in_epoch(number: int):
    """A Trainer._train_epoch that raises KeyboardInterrupt (Ctrl-C) as epoch ``number`` (1-based) starts."""
    original = Trainer._train_epoch

    def train_epoch(self, stage, stage_index, epoch, *rest):
        if epoch + 1 == number:
            raise KeyboardInterrupt
        return original(self, stage, stage_index, epoch, *rest)

    return train_epoch


def train(d: Path, out: Path, *args: str) -> int:
    return cli.main(["train", str(d / "base.yaml"), f"output={out}", *TWO_EPOCHS, *args])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A finished 2-epoch run, the same run killed (Ctrl-C) in its second epoch, and that run redone with
    --fresh over the finished one and killed in its second epoch (the old metrics.json stays)."""
    d = tmp_path_factory.mktemp("bad_runs")
    npz(d / "base.npz", np.arange(120) % 10, np.arange(20) % 10)
    write_base_config(d)
    assert train(d, d / "finished") == 0
    assert train(d, d / "finished_seed1", "seed=1") == 0
    shutil.copytree(d / "finished", d / "fresh_killed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_train_epoch", interrupt_in_epoch(2))
        assert train(d, d / "killed") == 130
        assert train(d, d / "fresh_killed", "--fresh") == 130
    return d


# ----------------------------------------------------------------------------- set-ups

def copy_of(name: str) -> Callable[[Path, Path], None]:
    return lambda out, d: shutil.copytree(d / name, out)


def overwrite_checkpoint(offset: float | None, size: int, name: str = "finished", fill: bytes = b"\xa5"):
    """A copy of run ``name`` whose checkpoint has ``size`` bytes overwritten at ``offset`` (a fraction of the
    file: 0.5 is the middle, its centre the middle's) or, with ``offset`` None, is cut to ``size`` bytes."""
    def prepare(out: Path, d: Path) -> None:
        shutil.copytree(d / name, out)
        path = out / "checkpoint.pt"
        data = bytearray(path.read_bytes())
        if offset is None:
            data = data[:size]
        else:
            start = min(max(0, int(len(data) * offset) - size // 2), len(data) - size)
            data[start:start + size] = (fill * size)[:size]
        path.write_bytes(bytes(data))
    return prepare


def checkpoint_is_a_folder(out: Path, d: Path) -> None:
    shutil.copytree(d / "finished", out)
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.pt").mkdir()


def users_folder(*names: str):
    """A user's own folder: their files (a name ending in / is a folder), no tailshift run."""
    def prepare(out: Path, d: Path) -> None:
        out.mkdir()
        for name in names:
            if name.endswith("/"):
                (out / name).mkdir()
            else:
                (out / name).write_text("the user's own\n")
    return prepare


def link_to(target: str):
    return lambda out, d: out.symlink_to(target)


def edit_config(old: str, new: str, name: str = "finished"):
    def prepare(out: Path, d: Path) -> None:
        shutil.copytree(d / name, out)
        text = (out / "config.yaml").read_text()
        assert old in text, text
        (out / "config.yaml").write_text(text.replace(old, new, 1))
    return prepare


def metrics_of(name: str):
    def prepare(out: Path, d: Path) -> None:
        shutil.copytree(d / "finished", out)
        shutil.copy(d / name / "metrics.json", out / "metrics.json")
    return prepare


def truncated_metrics(out: Path, d: Path) -> None:
    shutil.copytree(d / "finished", out)
    text = (out / "metrics.json").read_text()
    (out / "metrics.json").write_text(text[:len(text) // 2])


@dataclass
class Case:
    id: str
    args: list[str]
    fragment: str
    prepare: Callable[[Path, Path], None] | None = None
    output: str = "{out}"  # the run folder the command names


def bad(id: str, *args: str, fragment: str, **kw) -> Case:
    return Case(id, list(args), fragment, **kw)


DAMAGED = "cannot read checkpoint {out}/checkpoint.pt (damaged: "
FRESH = "it is never trained from: re-run with --fresh to start the run over, or remove the file"
NOT_OURS = "output {out} holds files that are not a tailshift run (e.g. {example}); choose an empty or new folder"
SYSTEM = "output {output} is a system folder; choose a folder of its own for the run"

TRAIN_CASES = [
    # --- checkpoints ----------------------------------------------------------------------
    bad("issue-checkpoint-16k-overwritten", fragment=DAMAGED, prepare=overwrite_checkpoint(0.5, 16384)),
    bad("checkpoint-16k-overwritten-says-what-to-do", fragment=FRESH, prepare=overwrite_checkpoint(0.5, 16384)),
    bad("checkpoint-16k-zeroed-at-a-third", fragment=DAMAGED, prepare=overwrite_checkpoint(1 / 3, 16384, fill=b"\0")),
    bad("checkpoint-one-byte-in-the-weights", fragment="fails its CRC check", prepare=overwrite_checkpoint(0.5, 1)),
    bad("checkpoint-header-overwritten", fragment=DAMAGED, prepare=overwrite_checkpoint(0.0, 64)),
    bad("checkpoint-end-overwritten", fragment=DAMAGED, prepare=overwrite_checkpoint(1.0, 200)),
    bad("checkpoint-truncated-to-half", fragment=DAMAGED,
        prepare=lambda out, d: overwrite_checkpoint(None, (d / "finished" / "checkpoint.pt").stat().st_size // 2)(out, d)),
    bad("checkpoint-last-byte-cut", fragment=DAMAGED,
        prepare=lambda out, d: overwrite_checkpoint(None, (d / "finished" / "checkpoint.pt").stat().st_size - 1)(out, d)),
    bad("checkpoint-empty", fragment=DAMAGED, prepare=overwrite_checkpoint(None, 0)),
    bad("checkpoint-is-a-folder", fragment=DAMAGED, prepare=checkpoint_is_a_folder),
    bad("unfinished-checkpoint-damaged", fragment=DAMAGED, prepare=overwrite_checkpoint(0.5, 16384, name="killed")),
    # --- run folders --------------------------------------------------------------------------
    bad("issue-users-own-folder", fragment=NOT_OURS.replace("{example}", "config.yaml"),
        prepare=users_folder("config.yaml", "notes.tmp", ".draft.1.abcdefgh.tmp")),
    bad("users-folder-with-fresh", "--fresh", fragment=NOT_OURS.replace("{example}", "data.csv"),
        prepare=users_folder("data.csv")),
    bad("users-folder-holding-a-folder", fragment=NOT_OURS.replace("{example}", "photos"),
        prepare=users_folder("photos/")),
    bad("users-folder-holding-a-hidden-file", fragment=NOT_OURS.replace("{example}", ".profile"),
        prepare=users_folder(".profile")),
    bad("issue-output-filesystem-root", fragment="output / is the filesystem root; choose a folder of its own",
        output="/"),
    bad("output-etc", fragment=SYSTEM, output="/etc"),
    bad("output-usr", fragment=SYSTEM, output="/usr"),
    bad("output-bin", fragment=SYSTEM, output="/bin"),
    bad("output-boot", fragment=SYSTEM, output="/boot"),
    bad("output-sys", fragment=SYSTEM, output="/sys"),
    bad("output-inside-proc", fragment=SYSTEM, output="/proc/self"),
    bad("output-inside-dev", fragment=SYSTEM, output="/dev/shm"),
    bad("output-home-itself", fragment="is your home folder itself; choose a folder of its own", output=str(Path.home())),
    bad("output-link-to-etc", fragment="output {out} is a system folder", prepare=link_to("/etc")),
    bad("output-link-to-root", fragment="output {out} is the filesystem root", prepare=link_to("/")),
    bad("output-dev-null", fragment="output /dev/null is a file, not a folder", output="/dev/null"),
]

RUN_CASES = [  # (command, extra args) x folder: evaluate, predict and export check the folder first
    *[bad(f"{command}-damaged-checkpoint", command, fragment=DAMAGED, prepare=overwrite_checkpoint(0.5, 16384))
      for command in ("evaluate", "predict", "export")],
    bad("evaluate-damaged-checkpoint-says-what-to-do", "evaluate",
        fragment="it is never evaluated: re-train the run (tailshift train ... --fresh) or remove the file",
        prepare=overwrite_checkpoint(0.5, 16384)),
    bad("issue-evaluate-edited-mean", "evaluate",
        fragment="{out}/config.yaml is not the config its checkpoint was trained with (checkpoint -> config.yaml: "
                 "data.mean: None -> [0.5]",
        prepare=edit_config("  mean: null\n  std: null", "  mean: [0.5]\n  std: [0.25]")),
    bad("predict-edited-seed", "predict", fragment="(checkpoint -> config.yaml: seed: 0 -> 3)",
        prepare=edit_config("\nseed: 0\n", "\nseed: 3\n")),
    bad("export-edited-method", "export", fragment="method.name: 'ce' -> 'cbrs'",
        prepare=edit_config("name: ce", "name: cbrs")),
    bad("issue-evaluate-fresh-killed-over-finished", "evaluate",
        fragment="the run in {out} did not finish (its checkpoint is at epoch 1 of 2); finish it with the same "
                 "train command, or pass --allow-unfinished", prepare=copy_of("fresh_killed")),
    bad("predict-unfinished", "predict", fragment="did not finish", prepare=copy_of("fresh_killed")),
    bad("export-unfinished", "export", fragment="did not finish", prepare=copy_of("fresh_killed")),
    bad("evaluate-metrics-of-another-run", "evaluate",
        fragment="{out}/metrics.json is not the finished run's", prepare=metrics_of("finished_seed1")),
    bad("evaluate-metrics-truncated", "evaluate", fragment="{out}/metrics.json is damaged (",
        prepare=truncated_metrics),
    bad("evaluate-killed-before-any-metrics", "evaluate", fragment="has no metrics.json", prepare=copy_of("killed")),
]


def watched(case: Case, out: Path) -> Path:
    """The folder whose content must not change: the run folder, or the system folder named."""
    return out if case.output == "{out}" else Path(case.output)


def contents(path: Path):
    """A test's folder in full (``snapshot``); a system folder, or a link to one, by its entries' names only."""
    if str(path).startswith(str(Path(os.environ.get("TMPDIR", "/tmp")))) and not path.is_symlink():
        return snapshot(path)
    return sorted(os.listdir(path)) if path.is_dir() else path.exists()


def refused(args: list[str], before, after_of: Callable[[], object], capsys) -> str:
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("tailshift: error: ") and err.count("\n") == 1, err
    assert after_of() == before  # nothing new, nothing changed
    return err


def test_the_tables_hold_the_issues_cases_and_20_more():
    cases = TRAIN_CASES + RUN_CASES
    assert len({c.id for c in cases}) == len(cases) >= 40 and sum(c.id.startswith("issue-") for c in cases) >= 5


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c.id for c in TRAIN_CASES])
def test_train_refuses_a_bad_run_folder_before_any_work(case, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    if case.prepare:
        case.prepare(out, data)
    monkeypatch.setattr(Trainer, "_fit", lambda *a: pytest.fail("training started"))
    output = case.output.format(out=out)
    folder = watched(case, out)
    before = contents(folder)
    err = refused(["train", str(data / "base.yaml"), f"output={output}", *TWO_EPOCHS, *case.args], before,
                  lambda: contents(folder), capsys)
    assert case.fragment.format(out=out, output=output) in err


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.id for c in RUN_CASES])
def test_evaluate_predict_export_refuse_an_inconsistent_run_folder(case, data, tmp_path, capsys):
    out = tmp_path / "run"
    case.prepare(out, data)
    command = case.args[0]
    extra = {"evaluate": [], "predict": [str(data / "base.npz")], "export": ["--format", "torchscript"]}[command]
    before = snapshot(out)
    err = refused([command, str(out), *extra], before, lambda: snapshot(out), capsys)
    assert case.fragment.format(out=out) in err


def test_damaged_checkpoint_of_a_finished_run_leaves_its_metrics_untouched(data, tmp_path, capsys):
    """The issue's case end to end: the same command again over a damaged finished run."""
    out = tmp_path / "run"
    overwrite_checkpoint(0.5, 16384)(out, data)
    metrics = (out / "metrics.json").read_bytes()
    assert train(data, out) == 2
    assert (out / "metrics.json").read_bytes() == metrics
    assert "--fresh" in capsys.readouterr().err
    assert train(data, out, "--fresh") == 0  # the way out the message names
    assert json.loads((out / "metrics.json").read_text())["result"] == json.loads(metrics)["result"]


def test_unfinished_run_is_scored_only_when_allowed(data, tmp_path, capsys):
    out = tmp_path / "run"
    copy_of("fresh_killed")(out, data)
    assert cli.main(["evaluate", str(out), "--allow-unfinished", "--output", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    old = json.loads((out / "metrics.json").read_text())
    assert result["groups"] == old["groups"] and result["heads"]["main"] != old["heads"]["main"]


def test_ctrl_c_says_where_the_run_resumes_and_it_resumes(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_train_epoch", interrupt_in_epoch(2))
        assert train(data, out) == 130
    captured = capsys.readouterr()
    assert captured.err == "tailshift: interrupted; re-run the same command to resume from epoch 2\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert train(data, out) == 0
    finished = json.loads((data / "finished" / "metrics.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["result"] == finished["result"]


def test_ctrl_c_before_training_exits_130_without_a_traceback(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tailshift.engine.prepare_data", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert train(data, tmp_path / "run") == 130
    assert capsys.readouterr().err == "tailshift: interrupted; re-run the same command to go on\n"


def test_disk_full_names_the_file_and_leaves_the_run_resumable(data, tmp_path, capsys, monkeypatch):
    """The second epoch's checkpoint write finds the disk full: the first epoch's checkpoint stays whole."""
    out = tmp_path / "run"
    real_fsync = os.fsync
    writes = []

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out / ".checkpoint.pt.")):
            writes.append(fd)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fsync)
        assert train(data, out) == 2
    err = capsys.readouterr().err
    mount = Path(subprocess.run(["df", "--output=target", str(out)], capture_output=True, text=True).stdout.split()[-1])
    assert err == (f"tailshift: error: no space left on {mount} while writing {out}/checkpoint.pt; free some space "
                   "and re-run the same command (the previous file is kept)\n")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")] and not (out / "metrics.json").exists()
    assert train(data, out) == 0  # resumes from the first epoch's checkpoint
    finished = json.loads((data / "finished" / "metrics.json").read_text())
    assert json.loads((out / "metrics.json").read_text())["result"] == finished["result"]


def test_study_workers_die_within_seconds_of_a_sigkilled_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from tailshift.reproduce.jobs import worker_pool

        def pid_after(seconds):
            time.sleep(seconds)
            return os.getpid()

        if __name__ == "__main__":
            pool = worker_pool(2)
            started = set()
            while len(started) < 2:  # both workers initialised (they run tasks only after their initializer)
                started |= set(pool.map(pid_after, [0.5, 0.5], chunksize=1))
            print(*started, flush=True)
            pool.map(time.sleep, [600, 600], chunksize=1)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), str(tmp_path)])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2
    time.sleep(1)  # both are asleep in their 600 s task
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(_alive, workers)):
        time.sleep(0.05)
    assert not any(map(_alive, workers))


def _alive(pid: int) -> bool:
    """Not gone and not a zombie (a dead child its init has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
