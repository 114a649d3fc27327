"""The embedded log's edges: what it stores for a record (no headers: NULL; the time it was
appended), how it answers once closed or broken, a failed append that leaves the next one free to
run, duplicates inside one request, the de-duplication memory purged at most once a minute, the
group commit's queue drained after a failing group, and the `appended` signal the runner wakes on."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.envelope import Envelope, decode
from schemas.topics import Topics
from streams.embedded_log import EmbeddedLog, _of_the_log
from streams.log import LogUnavailable, Outgoing

NOW = datetime.now(UTC)
KEEP = NOW + timedelta(days=7)
TOPICS = Topics(prefix="edge", usage_partitions=2)


def envelope(source_id: str, *, source: str = "gw") -> Envelope:
    return Envelope(
        id=f"id-{source_id}", type="call", tenant_id="t1", source=source, source_id=source_id, event_time=NOW, recorded_time=NOW
    )


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EmbeddedLog]:
    embedded = EmbeddedLog(tmp_path / "log.sqlite", TOPICS)
    await embedded.start()
    yield embedded
    await embedded.close()


async def usage(log: EmbeddedLog) -> list[str]:
    records = [r for p in range(TOPICS.usage_partitions) for r in await log.read(TOPICS.usage, p, 0, 1000)]
    return sorted(decode(r.value).source_id for r in records)


async def test_a_log_starts_in_a_folder_not_made_yet_with_its_settings(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "a" / "b" / "log.sqlite", TOPICS)
    await log.start()
    try:
        db = sqlite3.connect(tmp_path / "a" / "b" / "log.sqlite")
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.close()
        assert await log._run(lambda db: db.execute("PRAGMA busy_timeout").fetchone()) == (10_000,)  # waits 10 s for a lock
        assert await log._run(lambda db: db.execute("PRAGMA synchronous").fetchone()) == (2,)  # FULL
    finally:
        await log.close()


async def test_a_record_without_headers_stores_none_and_the_time_it_was_appended(log: EmbeddedLog, tmp_path: Path) -> None:
    before = int(time.time() * 1000)
    await log.append(TOPICS.control, [Outgoing("k", b"{}")])
    after = int(time.time() * 1000)
    db = sqlite3.connect(tmp_path / "log.sqlite")
    [(headers, appended_ms)] = db.execute("SELECT headers, appended_ms FROM records").fetchall()
    db.close()
    assert headers is None
    assert before <= appended_ms <= after


async def test_a_log_not_started_or_closed_is_unavailable(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite", TOPICS)
    with pytest.raises(LogUnavailable, match="^the embedded log is closed$"):
        await log.ping()
    await log.start()
    await log.ping()
    await log.close()
    with pytest.raises(LogUnavailable, match="^the embedded log is closed$"):
        await log.read(TOPICS.usage, 0, 0, 10)
    await log.close()  # closing twice is fine


async def test_a_broken_log_says_why(log: EmbeddedLog, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "log.sqlite")
    db.execute("DROP TABLE heads")
    db.commit()
    db.close()
    with pytest.raises(LogUnavailable, match="^the embedded log failed: no such table: heads$"):
        await log.end_offsets(TOPICS.usage)


async def test_a_failed_append_is_rolled_back_and_the_next_one_runs(log: EmbeddedLog) -> None:
    with pytest.raises(LogUnavailable):
        # The second item cannot be bound (its value is no bytes): the first is not kept either.
        await log.append(TOPICS.control, [Outgoing("k", b"one"), Outgoing("k", object())])  # type: ignore[arg-type]
    assert await log.read(TOPICS.control, 0, 0, 10) == []
    await log.append(TOPICS.control, [Outgoing("k", b"two")])
    [record] = await log.read(TOPICS.control, 0, 0, 10)
    assert (record.offset, record.value) == (0, b"two")
    assert await log.end_offsets(TOPICS.control) == {0: 1}


async def test_keep_until_must_match_the_envelopes(log: EmbeddedLog) -> None:
    with pytest.raises(ValueError, match="^one keep_until and one value per envelope$"):
        await log.ingest([envelope("x")], [])
    with pytest.raises(ValueError, match="^one keep_until and one value per envelope$"):
        await log.ingest([envelope("x")], [KEEP], [b"{}", b"{}"])


async def test_a_repeat_inside_one_request_is_a_duplicate(log: EmbeddedLog) -> None:
    assert await log.ingest([envelope("a"), envelope("b"), envelope("a")], [KEEP] * 3) == [True, True, False]
    assert await usage(log) == ["a", "b"]


async def test_expired_entries_are_forgotten_at_most_once_a_minute(log: EmbeddedLog, monkeypatch: pytest.MonkeyPatch) -> None:
    past = NOW - timedelta(days=1)  # kept until a moment already gone
    assert await log.ingest([envelope("a")], [past]) == [True]
    assert await log.ingest([envelope("a")], [past]) == [False]  # purged a moment ago: not again yet
    monkeypatch.setattr("streams.embedded_log.PURGE_EVERY_SECONDS", 0.0)
    assert await log.ingest([envelope("a")], [past]) == [True]  # purged now: admitted again


async def test_the_appended_signal_is_set_only_when_something_was_appended(log: EmbeddedLog) -> None:
    log.appended.clear()
    assert await log.ingest([envelope("a")], [KEEP]) == [True]
    assert log.appended.is_set()
    log.appended.clear()
    assert await log.ingest([envelope("a")], [KEEP]) == [False]
    assert not log.appended.is_set()


async def test_a_group_of_two_with_one_bad_request_commits_the_other(log: EmbeddedLog) -> None:
    bad = envelope("b", source="\ud800")  # SQLite cannot bind it: a lone surrogate is no UTF-8
    answers = await asyncio.gather(
        log.ingest([envelope("g")], [KEEP]), log.ingest([bad], [KEEP], [b"{}"]), return_exceptions=True
    )
    assert answers[0] == [True] and isinstance(answers[1], UnicodeEncodeError)
    assert await usage(log) == ["g"]


@pytest.mark.parametrize("group", [1, 2])
async def test_requests_that_arrive_while_a_group_fails_are_committed_after_it(log: EmbeddedLog, group: int) -> None:
    bad = envelope("b", source="\ud800")
    first = [asyncio.create_task(log.ingest([bad], [KEEP], [b"{}"]))]
    if group == 2:
        first.append(asyncio.create_task(log.ingest([envelope("g0")], [KEEP])))
    for _ in range(3):  # the committer takes the first group and commits it in a thread
        await asyncio.sleep(0)
    assert log._waiting == []
    later = asyncio.create_task(log.ingest([envelope("later")], [KEEP]))
    assert await asyncio.wait_for(later, 5.0) == [True]
    answers = await asyncio.gather(*first, return_exceptions=True)
    assert isinstance(answers[0], UnicodeEncodeError)
    assert await usage(log) == (["g0", "later"] if group == 2 else ["later"])


def unavailable_from(cause: BaseException | None) -> LogUnavailable:
    """The LogUnavailable `run_locked` raises for a failure of SQLite's (`cause`), or for none."""
    try:
        raise LogUnavailable("the embedded log failed") from cause
    except LogUnavailable as failure:
        return failure


def test_a_group_fails_whole_only_for_a_failure_of_the_log_itself() -> None:
    assert _of_the_log(unavailable_from(None))  # closed
    assert _of_the_log(unavailable_from(sqlite3.OperationalError("disk I/O error")))  # locked, full, I/O
    # one request's content that SQLite cannot take: the group is committed again request by request
    assert not _of_the_log(unavailable_from(sqlite3.InterfaceError("Error binding parameter 2")))
    assert not _of_the_log(unavailable_from(sqlite3.IntegrityError("NOT NULL constraint failed")))
    assert not _of_the_log(ValueError("not an envelope"))
