import json

import pytest

from tailshift.io import LOCK_NAME, RunFolderBusyError, RunFolderError, RunLock, atomic_open, atomic_write_json, check_folder_free


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    plain = tmp_path / "plain"
    plain.write_text("")
    assert target.stat().st_mode == plain.stat().st_mode  # the mode open() gives, not a temp file's 0600


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    target = tmp_path / "curve.json"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_open(target, "w") as f:
            f.write("half of the new")
            1 / 0
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["curve.json"]


def test_two_writers_of_one_file_get_their_own_temp_files(tmp_path):
    target = tmp_path / "checkpoint.pt"
    with atomic_open(target) as first, atomic_open(target) as second:
        assert first.name != second.name
        first.write(b"first")
        second.write(b"second")
    assert target.read_bytes() == b"first"  # the outer context renames last


def test_second_lock_on_a_folder_fails_at_once_naming_folder_and_pid(tmp_path):
    import os

    folder = tmp_path / "run"
    with RunLock(folder):
        with pytest.raises(RunFolderBusyError, match=f"run folder {folder} is in use by another tailshift process "
                                                     rf"\(pid {os.getpid()}\)"):
            RunLock(folder).__enter__()
        with pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()}"):
            check_folder_free(folder)
    with RunLock(folder):  # released on exit
        pass
    check_folder_free(folder)


def test_taking_the_lock_removes_temp_files_of_killed_writers_only(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder):  # a run held the folder before
        pass
    stale = folder / ".checkpoint.pt.4242.abcd1234.tmp"
    stale.write_bytes(b"half")
    mine = [folder / "notes.tmp", folder / ".notes.1.draft.tmp", folder / ".x.tmp"]  # not tailshift's temp names
    for path in mine:
        path.write_text("a user's file")
    with RunLock(folder):
        assert not stale.exists() and all(p.exists() for p in mine) and (folder / LOCK_NAME).exists()


def test_lock_refuses_a_file_in_place_of_the_folder_and_the_probe_creates_nothing(tmp_path):
    path = tmp_path / "run"
    check_folder_free(path)
    assert not path.exists()
    path.write_text("x")
    with pytest.raises(RunFolderError, match=f"output {path} is a file, not a folder"):
        RunLock(path).__enter__()
