"""Replays as jobs (POST /v1/admin/replays): each runs in the process that was asked, as a task
of its own, and keeps its row (stores.replays) current for every process to read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.envelope import format_time
from stores import replays as store
from stores import shadow
from stores.database import Database
from streams.replay import Mode, Progress, Replayer, Request

log = logging.getLogger(__name__)

BEAT_EVERY = 0.5  # seconds between writes of a running job's progress


def _now() -> tuple[str, int]:
    moment = datetime.now(UTC)
    return format_time(moment), int(moment.timestamp() * 1_000_000)


class ReplayJobs:
    def __init__(self, replayer: Replayer, db: Database) -> None:
        self.replayer = replayer
        self.db = db
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, projections: Sequence[str], mode: Mode) -> str:
        """Queue a replay and start it; UnknownProjection or store.Busy when it cannot be
        (blocking: call it from a worker thread)."""
        names = [p.name for p in shadow.chosen(projections)]
        job_id = shadow.new_id()
        now, now_us = _now()
        with self.db.transaction() as tx:
            store.start(tx, job_id, names, mode.value, now, now_us)
        return job_id

    def run(self, job_id: str, projections: Sequence[str], mode: Mode) -> None:
        """Run a started job in the background of the current event loop."""
        task = asyncio.get_running_loop().create_task(self._run(job_id, projections, mode), name=f"replay-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    def get(self, job_id: str) -> store.JobRow | None:
        with self.db.transaction() as tx:
            return store.get(tx, job_id, _now()[1])

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self, job_id: str, projections: Sequence[str], mode: Mode) -> None:
        progress = Progress()
        work = asyncio.ensure_future(self.replayer.run(Request(tuple(projections), mode), replay_id=job_id, progress=progress))
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=BEAT_EVERY)
                if not work.done():
                    await asyncio.to_thread(self._beat, job_id, "running", progress)
            outcome = work.result()
            differences = len(outcome.differences) if mode is Mode.DIFF else None
            await asyncio.to_thread(self._finish, job_id, "done", progress, differences, outcome.swapped, None)
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)  # its shadow removed before the views close
            await asyncio.to_thread(self._finish, job_id, "failed", progress, None, False, "stopped with its process")
            raise
        except Exception as failure:
            log.exception("replay %s failed", job_id)
            await asyncio.to_thread(self._finish, job_id, "failed", progress, None, False, f"{type(failure).__name__}: {failure}")

    def _beat(self, job_id: str, state: str, progress: Progress) -> None:
        with self.db.transaction() as tx:
            store.beat(tx, job_id, state, progress.done, progress.total, progress.per_second, _now()[1])

    def _finish(
        self, job_id: str, state: str, progress: Progress, differences: int | None, swapped: bool, error: str | None
    ) -> None:
        now, now_us = _now()
        with self.db.transaction() as tx:
            store.finish(
                tx, job_id, state=state, done=progress.done, total=progress.total, per_second=progress.per_second,
                differences=differences, swapped=swapped, error=error, now=now, now_us=now_us,
            )  # fmt: skip
