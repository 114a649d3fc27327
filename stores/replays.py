"""Replay jobs (streams.replay_jobs): one row each, written by the process that runs it.

Not a view of the log (no replay rebuilds it, nor compares or swaps it). The row is kept current
while the job runs (`beat_us`): a queued or running job whose process stopped beating (it died)
is read as failed and no longer holds its projections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from stores import shadow
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS replay_jobs (
    id TEXT PRIMARY KEY, projections TEXT NOT NULL, mode TEXT NOT NULL, state TEXT NOT NULL,
    done BIGINT NOT NULL, total BIGINT NOT NULL, per_second DOUBLE PRECISION NOT NULL, differences BIGINT,
    swapped INTEGER NOT NULL, error TEXT, created_at TEXT NOT NULL, finished_at TEXT, beat_us BIGINT NOT NULL);
"""
ACTIVE = ("queued", "running")
STALE_US = 30_000_000  # a job not heard from for this long died with its process


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    projections: list[str]
    mode: str
    state: str
    done: int
    total: int
    per_second: float
    differences: int | None
    swapped: bool
    error: str | None
    created_at: str
    finished_at: str | None


class Busy(Exception):
    """Another replay of one of these projections is queued or running."""

    def __init__(self, job_id: str, projections: Sequence[str]) -> None:
        super().__init__(f"replay {job_id} of {', '.join(projections)} is still running")
        self.job_id = job_id


def lock(tx: Tx) -> None:
    """Serialise the starts of jobs (PostgreSQL; SQLite's transactions are serial already)."""
    if tx.dialect == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('omni.replay_jobs'))")


def start(tx: Tx, job_id: str, projections: Sequence[str], mode: str, now: str, now_us: int) -> None:
    """Record a queued job, unless a live one holds one of `projections` (every name given), or
    both swap and share a fold (stores.shadow): Busy."""
    lock(tx)
    rows = tx.execute(
        "SELECT id, projections, mode FROM replay_jobs WHERE state IN (?, ?) AND beat_us > ?", (*ACTIVE, now_us - STALE_US)
    )
    for other, names, other_mode in rows:
        theirs = orjson.loads(names)
        clash = sorted(set(projections) & set(theirs))
        if not clash and mode == other_mode == "swap":
            clash = sorted({f.name for f in _folds(projections)} & {f.name for f in _folds(theirs)})
        if clash:
            raise Busy(str(other), clash)
    tx.execute(
        "INSERT INTO replay_jobs VALUES (?, ?, ?, 'queued', 0, 0, 0, NULL, 0, NULL, ?, NULL, ?)",
        (job_id, orjson.dumps(list(projections)).decode(), mode, now, now_us),
    )


def _folds(names: Sequence[str]) -> list[shadow.Fold]:
    return shadow.folds_of(shadow.chosen(names))


def beat(tx: Tx, job_id: str, state: str, done: int, total: int, per_second: float, now_us: int) -> None:
    tx.execute(
        "UPDATE replay_jobs SET state=?, done=?, total=?, per_second=?, beat_us=? WHERE id=?",
        (state, done, total, per_second, now_us, job_id),
    )


def finish(
    tx: Tx, job_id: str, *, state: str, done: int, total: int, per_second: float, differences: int | None,
    swapped: bool, error: str | None, now: str, now_us: int,
) -> None:  # fmt: skip
    tx.execute(
        "UPDATE replay_jobs SET state=?, done=?, total=?, per_second=?, differences=?, swapped=?, error=?, "
        "finished_at=?, beat_us=? WHERE id=?",
        (state, done, total, per_second, differences, int(swapped), error, now, now_us, job_id),
    )


def get(tx: Tx, job_id: str, now_us: int) -> JobRow | None:
    rows = tx.execute(
        "SELECT id, projections, mode, state, done, total, per_second, differences, swapped, error, created_at, "
        "finished_at, beat_us FROM replay_jobs WHERE id=?",
        (job_id,),
    )
    if not rows:
        return None
    (id_, names, mode, state, done, total, rate, differences, swapped, error, created, finished, beat_us) = rows[0]
    if state in ACTIVE and int(beat_us) <= now_us - STALE_US:
        state, error = "failed", "the process running the replay stopped"
    return JobRow(
        str(id_), list(orjson.loads(names)), str(mode), str(state), int(done), int(total), float(rate),
        None if differences is None else int(differences), bool(swapped), error, str(created), finished,
    )  # fmt: skip
