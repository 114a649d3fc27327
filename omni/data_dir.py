"""Embedded mode's data directory has one `omni serve` at a time.

Its runner, relay, key cache and quota counters assume they are the only ones on those files
(stores.database's `_Sole` leadership; the key cache hears only its own process's commands), so a
second process on the same directory would fold, relay and answer on its own: a key revoked through
one was still accepted by the other. `omni serve` holds an exclusive `flock` on `serve.lock` in the
directory for as long as it runs; the kernel releases it when the process ends, however it ends
(SIGKILL included), so no stale lock is ever left to clear by hand. `omni replay` and the other
commands that read the directory beside a running server take no lock.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "serve.lock"


class DataDirInUse(Exception):
    """Another process holds the data directory's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process"
        super().__init__(
            f"another `omni serve` ({holder}) is using the data directory {data_dir.resolve()}. One data directory has "
            "one `omni serve`: stop that one first, or give this one another OMNI_DATA_DIR"
        )
        self.pid = pid


class DataDirUnwritable(Exception):
    """The data directory cannot be created or written (a read-only file system, no permission)."""

    def __init__(self, data_dir: Path, failure: OSError) -> None:
        super().__init__(f"the data directory {data_dir.resolve()} cannot be written: {failure.strerror or failure}")


@dataclass
class DataDirLock:
    """The lock `hold` took; released by `release` or when the process ends."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor of the open file releases its flock
            self.fd = -1


def hold(data_dir: Path) -> DataDirLock:
    """Take the data directory for this process (creating it if needed), or raise DataDirInUse
    naming the process that has it, or DataDirUnwritable."""
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as failure:
        raise DataDirUnwritable(data_dir, failure) from failure
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _pid_in(fd)
        os.close(fd)
        raise DataDirInUse(data_dir, holder) from None
    try:  # who holds it, for the next process's message; the lock itself is the flock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as failure:  # a full disk: refuse here rather than later in the middle of a write
        os.close(fd)
        raise DataDirUnwritable(data_dir, failure) from failure
    return DataDirLock(path, fd)


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
