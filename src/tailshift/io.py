"""Safe writing: one writer per run folder, and no file ever seen half-written.

Every file tailshift writes goes through ``atomic_open``: the bytes go to a temp file
unique to the writer (pid and a random suffix, in the same folder), are flushed to
disk, and the temp file is renamed over the target. A reader, or a run killed at any
instant, sees the old file or the new one, never a mixture.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

#: the lock file inside a run folder; it holds the pid of the process that has the folder
LOCK_NAME = ".tailshift.lock"
#: temp files are named ``.<target>.<pid>.<random>.tmp`` (mkstemp's 8 random characters)
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\..+\.[0-9]+\.[a-z0-9_]{8}\.tmp")
#: folders a run may never be written into (besides the filesystem root and the home folder itself)
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin", "/sys",
                  "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/local", "/usr/sbin", "/var")
#: mkstemp makes private (0600) files; written files get the usual mode, as open() would give them
_UMASK = os.umask(0)
os.umask(_UMASK)


class RunFolderError(RuntimeError):
    """The run folder cannot be written (e.g. a file stands in its place)."""


class RunFolderBusyError(RunFolderError):
    """Another process is writing the run folder."""


class DiskFullError(OSError):
    """A write ran out of space; the file it replaced is left as it was."""


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem ``path`` is on (the folder to free space in)."""
    path = path.resolve()
    device = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (the folder entry, not only the file's bytes)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on a clean exit, fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on {_mount_point(path.parent)} while writing {path}; "
                                "free some space and re-run the same command (the previous file is kept)") from None
        raise
    _fsync_folder(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def _holder(lock_path: Path) -> str:
    """The holder's pid; it writes it just after taking the lock, so wait a moment for it."""
    for _ in range(100):
        with contextlib.suppress(OSError):
            pid = lock_path.read_text().strip()
            if pid:
                return f"pid {pid}"
        time.sleep(0.01)
    return "pid unknown"


def _refuse_foreign_folder(folder: Path) -> None:
    """A run folder is tailshift's only if it is absent, empty or holds a run (its lock file, written with
    the lock, is the marker); never the filesystem root, a system folder or the home folder itself."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output {folder} is a file, not a folder; choose a folder for the run")
    real = folder.resolve()
    if real.parent == real:
        raise RunFolderError(f"output {folder} is the filesystem root; choose a folder of its own for the run")
    if ({str(real), os.path.abspath(folder)} & set(SYSTEM_FOLDERS) or real == Path.home().resolve()
            or any(real.is_relative_to(virtual) for virtual in ("/proc", "/sys", "/dev"))):
        what = "your home folder itself" if real == Path.home().resolve() else "a system folder"
        raise RunFolderError(f"output {folder} is {what}; choose a folder of its own for the run")
    if real.is_dir() and not (real / LOCK_NAME).exists() and any(real.iterdir()):
        example = min((p.name for p in real.iterdir()), key=lambda name: (name.startswith("."), name))
        raise RunFolderError(f"output {folder} holds files that are not a tailshift run (e.g. {example}); "
                             "choose an empty or new folder for the run")


def check_folder_free(folder: str | Path) -> None:
    """Fail at once if ``folder`` is not tailshift's or another process holds its lock; creates nothing.

    Lets a second command stop before it reads any data; ``RunLock`` is the real guard.
    """
    folder = Path(folder)
    _refuse_foreign_folder(folder)
    lock_path = folder / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFolderBusyError(_busy_message(folder, lock_path)) from None
    finally:
        os.close(fd)  # closing drops the shared lock at once


def _busy_message(folder: Path, lock_path: Path) -> str:
    return (f"run folder {folder} is in use by another tailshift process ({_holder(lock_path)}); "
            "wait for it to finish or choose another output")


class RunLock:
    """An exclusive OS lock (flock) on ``folder``/.tailshift.lock, held while a run writes.

    The kernel drops the lock when the holder exits, even by SIGKILL, so a lock is never
    stale. A second writer fails at once, naming the folder and the holder's pid. Temp
    files left by a killed writer are removed when the next writer takes the folder.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.lock_path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        _refuse_foreign_folder(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunFolderBusyError(_busy_message(self.folder, self.lock_path)) from None
            raise
        os.pwrite(fd, f"{os.getpid():>10}\n".encode(), 0)  # one fixed-width write: never read half-done
        os.ftruncate(fd, 11)
        self._fd = fd
        self._remove_stale_temp_files()
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (unlinking it would race)
            self._fd = None

    def _remove_stale_temp_files(self) -> None:
        """Holding the lock, no other writer exists: a file named as tailshift names its temp files is
        a killed writer's; nothing else is touched."""
        for tmp in self.folder.glob(f".*{TEMP_SUFFIX}"):
            if _TEMP_NAME.fullmatch(tmp.name):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
