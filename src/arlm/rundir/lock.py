"""One trainer per run folder: an exclusive ``flock`` on ``RUN/.lock``, held for the whole run.

The lock file holds the owner's pid and host, for the message a second trainer gets. A clean
exit removes the file; a killed trainer leaves it behind, but the kernel drops its flock with the
process, so the next trainer takes the file over and says whose it was. Readers (``load_run``,
``generate``, ``eval``) take no lock: every file they read is replaced atomically or belongs to a
committed checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from ..config import ConfigError
from .layout import LOCK, CheckpointError


class RunBusyError(CheckpointError):
    """Another process is training into the same run folder."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _owner(text: str) -> tuple[str, str]:
    lines = text.split("\n")
    return lines[0].strip(), (lines[1].strip() if len(lines) > 1 else "")


class RunLock:
    """The training lock of ``run_dir``; ``acquire`` raises ``RunBusyError`` if another process holds it."""

    def __init__(self, run_dir: str | Path, log: Callable[[str], None] = _stderr):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.log = log
        self._fd: int | None = None
        self._made_dir = False

    def acquire(self) -> "RunLock":
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"--out {self.run_dir} exists and is not a folder; choose a folder for the run")
        self._made_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, host = _owner(os.pread(fd, 256, 0).decode("utf-8", "replace"))
                os.close(fd)
                self._drop_dir()
                where = f" on {host}" if host and host != socket.gethostname() else ""
                raise RunBusyError(
                    f"{self.run_dir} is being trained by {f'pid {pid}' if pid else 'another process'}{where}; "
                    "wait for it to finish or stop it (a stopped run resumes with --resume auto), "
                    "or choose another --out") from None
            except OSError as e:  # a filesystem without flock support: train, but say what is not guarded
                os.close(fd)
                self.log(f"warning: cannot lock {self.path} ({e.strerror or e}); training without a lock, "
                         "so do not start a second trainer on this folder")
                return self
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous owner removed the file between our open and flock: lock the new one
        previous, host = _owner(os.pread(fd, 256, 0).decode("utf-8", "replace"))
        if previous:
            self.log(f"{self.path} was left by pid {previous}{f' on {host}' if host else ''}, which no longer "
                     "holds it (it was killed or crashed); taking it over")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{socket.gethostname()}\n".encode(), 0)
            os.fsync(fd)
        except OSError:
            pass  # a full disk: the flock still excludes others; only the pid in their message is lost
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (a clean exit leaves no lock file behind)."""
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        self._drop_dir()

    def _drop_dir(self) -> None:
        """Remove the run folder again if this lock created it and nothing was written into it."""
        if self._made_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def training_lock(run_dir: str | Path, log: Callable[[str], None] = _stderr, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the duration; ``enabled=False`` (ranks other than 0 under
    torchrun, whose rank 0 holds it for the job) does nothing."""
    if not enabled:
        yield
        return
    with RunLock(run_dir, log):
        yield
