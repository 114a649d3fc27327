"""One relay leads at a time; when the leader goes, another takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stores.database import PostgresDatabase, SqliteDatabase
from tests.contract.conftest import DATABASE_URL


def test_one_leader_at_a_time_and_takeover(pg_schema: str) -> None:
    first = PostgresDatabase(DATABASE_URL, schema=pg_schema).leadership("relay")
    second = PostgresDatabase(DATABASE_URL, schema=pg_schema).leadership("relay")
    other_schema = PostgresDatabase(DATABASE_URL, schema=pg_schema + "x").leadership("relay")
    try:
        assert first.hold() is True
        assert second.hold() is False
        assert first.hold() is True  # still leading
        assert other_schema.hold() is True  # another deployment on the same server leads its own relay
        first.release()  # the leader's process dies: its session and lock go with it
        assert second.hold() is True
    finally:
        for lead in (first, second, other_schema):
            lead.release()


def test_a_claim_is_held_by_one_job_at_a_time_and_lost_with_its_process(pg_schema: str) -> None:
    """A GDPR request's job runs under a claim: one holder across processes, and within one."""
    first_db = PostgresDatabase(DATABASE_URL, schema=pg_schema)
    second_db = PostgresDatabase(DATABASE_URL, schema=pg_schema)
    other_db = PostgresDatabase(DATABASE_URL, schema=pg_schema + "x")
    first, second, other = first_db.claims(), second_db.claims(), other_db.claims()
    try:
        assert first.claim("gdpr-request:1") is True
        assert first.claim("gdpr-request:1") is False  # the same process: its session would take it twice
        assert second.claim("gdpr-request:1") is False
        assert second.claim("gdpr-request:2") is True  # another request is free
        assert other.claim("gdpr-request:1") is True  # another deployment's request of that name
        first.release("gdpr-request:1")
        assert second.claim("gdpr-request:1") is True
        assert first.claim("gdpr-request:1") is False
        second.close()  # its process stops: its session and every claim of it go
        # The server ends the closed session a moment after the client hangs up, not before close() returns.
        deadline = time.monotonic() + 10
        while not first.claim("gdpr-request:1"):
            assert time.monotonic() < deadline, "the closed session's claim was never freed"
            time.sleep(0.01)
        assert first.claim("gdpr-request:2") is True
    finally:
        for claims, db in ((first, first_db), (second, second_db), (other, other_db)):
            claims.close()
            db.close()


def test_a_claim_is_freed_when_its_process_is_killed(pg_schema: str) -> None:
    """SIGKILL, as a power cut: no release runs, the server drops the session and its locks."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, DATABASE_URL, pg_schema],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    db = PostgresDatabase(DATABASE_URL, schema=pg_schema)
    claims = db.claims()
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"claimed"
        assert claims.claim("gdpr-request:1") is False
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 10
        while not claims.claim("gdpr-request:1"):
            assert time.monotonic() < deadline, "the killed process's claim was never freed"
            time.sleep(0.02)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        claims.close()
        db.close()


HOLDER = """
import sys, time
from stores.database import PostgresDatabase
claims = PostgresDatabase(sys.argv[1], schema=sys.argv[2]).claims()
assert claims.claim("gdpr-request:1")
print("claimed", flush=True)
time.sleep(60)
"""
ROOT = Path(__file__).resolve().parents[2]


def test_a_leader_that_stops_answering_without_dying_lets_another_lead(pg_schema: str) -> None:
    """SIGSTOP (as a frozen VM or a network partition): the server still sees the leader's connection
    open, so its lock would stay for hours and no other process would relay the outbox. Its session
    ends once idle for the leader's idle limit; another process leads, and the stopped one, resumed,
    finds it no longer leads."""
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER, DATABASE_URL, pg_schema],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    db = PostgresDatabase(DATABASE_URL, schema=pg_schema, leader_idle_seconds=1)
    other = db.leadership("relay")
    try:
        assert leader.stdin is not None and leader.stdout is not None
        assert leader.stdout.readline().strip() == b"leading"
        assert other.hold() is False
        leader.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 20
        while not other.hold():
            assert time.monotonic() < deadline, "the stopped leader kept the leadership"
            time.sleep(0.05)
        leader.send_signal(signal.SIGCONT)
        leader.stdin.write(b"hold\n")
        leader.stdin.flush()
        assert leader.stdout.readline().strip() == b"False"  # resumed, it stands by
        assert other.hold() is True
    finally:
        if leader.poll() is None:
            leader.kill()
        leader.wait()
        other.release()
        db.close()


LEADER = """
import sys
from stores.database import PostgresDatabase
leadership = PostgresDatabase(sys.argv[1], schema=sys.argv[2], leader_idle_seconds=1).leadership("relay")
assert leadership.hold()
print("leading", flush=True)
sys.stdin.readline()
print(leadership.hold(), flush=True)
"""


def test_a_claim_in_the_one_embedded_process(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "views.sqlite")
    claims = db.claims()
    assert claims.claim("gdpr-request:1") is True
    assert claims.claim("gdpr-request:1") is False
    claims.release("gdpr-request:1")
    assert claims.claim("gdpr-request:1") is True
    db.close()


async def test_a_leaders_duty_runs_only_while_it_leads_and_survives_its_failures(pg_schema: str) -> None:
    """omni.leading.lead_every: the step runs in the leading process only; a failing step (an outage
    or a bug) is retried on the next turn; stopping releases the leadership for another process."""
    import asyncio

    from omni.leading import lead_every
    from stores.database import StoreUnavailable

    leader_db, other_db = PostgresDatabase(DATABASE_URL, schema=pg_schema), PostgresDatabase(DATABASE_URL, schema=pg_schema)
    stop, other_stop = asyncio.Event(), asyncio.Event()
    turns: list[str] = []
    failures = iter([StoreUnavailable("away"), RuntimeError("a bug")])

    async def step() -> None:
        turns.append("leader")
        failure = next(failures, None)
        if failure is not None:
            raise failure
        if len(turns) >= 4:
            stop.set()

    async def other_step() -> None:
        turns.append("other")
        other_stop.set()

    try:
        leading = asyncio.create_task(lead_every(leader_db, "duty", 0.01, stop, step, "duty"))
        while not turns:  # the first process holds the leadership before the second asks
            await asyncio.sleep(0.005)
        await asyncio.wait_for(
            asyncio.gather(leading, lead_every(other_db, "duty", 0.01, other_stop, other_step, "other duty")), timeout=20
        )
    finally:
        leader_db.close()
        other_db.close()
    assert turns[:4] == ["leader"] * 4  # two failed turns, then two that ran, all in the leader
    assert turns[4:] == ["other"]  # once the leader stopped and let go, the other process took over
