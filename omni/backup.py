"""`omni backup DEST`: a consistent copy of a running embedded data directory (README, "Backups").

The data directory holds three SQLite files that refer to each other: the views hold offsets into
the log and positions in the event store, the log holds the store positions the relay published up
to, events on the log are sealed with data keys kept in the event store's file. Copied one after
another while `omni serve` writes, each file would be of another moment: views ahead of the log (a
restored runner would skip the records appended after the restore at those offsets), control
records on the log whose store events are not in the copy (the relay would never publish the
commands that reuse those positions), sealed events whose keys are missing.

So the copy is of one instant: every file's write lock is taken (SQLite's BEGIN IMMEDIATE, on
connections of this process; `omni serve`'s writers wait meanwhile, as they wait for each other),
a read transaction is opened on each file, and the locks are let go, a few milliseconds in all.
Then each file is copied from its read transaction with SQLite's online backup API (one step: the
pages of that snapshot, whatever is written meanwhile), into a folder beside DEST renamed to DEST
once every copy passed `PRAGMA quick_check`. The keys kept in the data directory (the admin key,
the GDPR master key, the audit signing key) are copied too, readable by their owner only.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

# In the order their write locks are taken. The views first: `omni serve` takes the views' lock and
# then reads the log, never the other way round, except the quota ledger's build at start (a wait
# this process ends by letting go and trying again).
DATABASES = ("views.sqlite", "eventstore.sqlite", "log.sqlite")
SECRETS = ("admin_key", "gdpr_master_key", "audit_signing_key.pem")
LOCK_WAIT_SECONDS = 2.0  # per file; `omni serve`'s writers wait up to 10 s for a lock
ATTEMPTS = 10


class BackupFailed(Exception):
    """The copy could not be made; nothing was left at the destination."""


@dataclass(frozen=True)
class Copied:
    destination: Path
    files: dict[str, int]  # name -> bytes


def backup(data_dir: Path, destination: Path) -> Copied:
    """Copy `data_dir` as it stands at one instant into `destination` (which must not exist)."""
    missing = [name for name in DATABASES if not (data_dir / name).is_file()]
    if missing:
        raise BackupFailed(f"{data_dir.resolve()} holds no {', '.join(missing)}: is it the data directory `omni serve` ran in?")
    if destination.exists():
        raise BackupFailed(f"{destination.resolve()} exists already: name a new folder")
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True)
        snapshots = _snapshots(data_dir)
        try:
            for name, source in snapshots.items():
                _copy(source, partial / name)
        finally:
            for source in snapshots.values():
                source.close()
        for name in SECRETS:
            if (data_dir / name).is_file():
                _copy_secret(data_dir / name, partial / name)
        partial.rename(destination)
    except (OSError, sqlite3.Error) as failure:
        shutil.rmtree(partial, ignore_errors=True)
        raise BackupFailed(str(failure)) from failure
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return Copied(destination, {path.name: path.stat().st_size for path in sorted(destination.iterdir())})


def _snapshots(data_dir: Path) -> dict[str, sqlite3.Connection]:
    """A connection per database, each in a read transaction of the same instant."""
    for attempt in range(ATTEMPTS):
        locks: list[sqlite3.Connection] = []
        snapshots: dict[str, sqlite3.Connection] = {}
        try:
            for name in DATABASES:
                locks.append(_connect(data_dir / name))
                locks[-1].execute("BEGIN IMMEDIATE")  # no writer on this file until the snapshots are open
            for name in DATABASES:
                snapshots[name] = _connect(data_dir / name)
                snapshots[name].execute("BEGIN")
                snapshots[name].execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot is taken here
            return snapshots
        except sqlite3.OperationalError as busy:
            for snapshot in snapshots.values():
                snapshot.close()
            if "locked" not in str(busy) or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))  # a writer holding one file while waiting for another: let it finish
        finally:
            for lock in locks:
                lock.close()  # rolls back: the writers go on
    raise AssertionError("unreachable")


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=LOCK_WAIT_SECONDS)


def _copy(source: sqlite3.Connection, target: Path) -> None:
    """The source's snapshot into a new file, in one step (its read transaction's pages)."""
    copy = sqlite3.connect(target, isolation_level=None)
    try:
        source.backup(copy)
        (verdict,) = copy.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise BackupFailed(f"the copy of {target.name} does not check: {verdict}")
        copy.execute("PRAGMA journal_mode=WAL")  # as `omni serve` keeps its files
    finally:
        copy.close()


def _copy_secret(source: Path, target: Path) -> None:
    target.touch(mode=0o600)
    target.chmod(0o600)
    target.write_bytes(source.read_bytes())
