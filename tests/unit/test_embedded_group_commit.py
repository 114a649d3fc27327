"""The embedded log's group commit: one request that cannot be stored fails alone (issue 11, item 1)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.envelope import Envelope, decode, encode
from schemas.topics import Topics
from streams.embedded_log import EmbeddedLog
from streams.log import LogUnavailable

NOW = datetime.now(UTC)
KEEP = NOW + timedelta(days=7)
TOPICS = Topics(prefix="t", usage_partitions=2)


def envelope(source_id: str, *, tenant: str = "victim", data: object = None, source: str = "gw") -> Envelope:
    return Envelope(
        id=f"id-{tenant}-{source_id}",
        type="call",
        tenant_id=tenant,
        source=source,
        source_id=source_id,
        event_time=NOW,
        recorded_time=NOW,
        data=data,
    )


def deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EmbeddedLog]:
    embedded = EmbeddedLog(tmp_path / "log.sqlite", TOPICS)
    await embedded.start()
    yield embedded
    await embedded.close()


async def stored(log: EmbeddedLog) -> list[tuple[str, str]]:
    records = []
    for partition in range(TOPICS.usage_partitions):
        records += await log.read(TOPICS.usage, partition, 0, 1000)
    return sorted((e.tenant_id, e.source_id) for e in map(decode, (r.value for r in records)))


async def test_an_envelope_that_cannot_be_encoded_fails_only_its_own_request(log: EmbeddedLog) -> None:
    victims = [[envelope(f"v{i}-{j}") for j in range(3)] for i in range(4)]
    attacker = [envelope("a", tenant="attacker", data=deep(300))]  # beyond orjson's 254 levels
    # Gathered, every request joins the waiting list before the first commit starts: one group.
    answers = await asyncio.gather(
        *(log.ingest(batch, [KEEP] * len(batch)) for batch in victims[:2]),
        log.ingest(attacker, [KEEP]),
        *(log.ingest(batch, [KEEP] * len(batch)) for batch in victims[2:]),
        return_exceptions=True,
    )
    assert answers[:2] + answers[3:] == [[True] * 3] * 4
    assert isinstance(answers[2], Exception)
    assert await stored(log) == sorted(("victim", e.source_id) for batch in victims for e in batch)


async def test_when_a_group_fails_for_one_request_the_others_are_committed_alone(log: EmbeddedLog) -> None:
    good = [envelope(f"g{i}") for i in range(3)]
    # Encoded fine (values given), but SQLite cannot bind its key: a lone surrogate is no UTF-8.
    bad = envelope("b", source="\ud800", tenant="attacker")
    answers = await asyncio.gather(
        log.ingest(good[:2], [KEEP, KEEP], [encode(e) for e in good[:2]]),
        log.ingest([bad], [KEEP], [encode(envelope("b", tenant="attacker"))]),
        log.ingest(good[2:], [KEEP]),  # values left out: encoded in the request's own context
        return_exceptions=True,
    )
    assert answers[0] == [True, True] and answers[2] == [True]
    assert isinstance(answers[1], UnicodeEncodeError)
    assert await stored(log) == [("victim", "g0"), ("victim", "g1"), ("victim", "g2")]
    # The failed request claimed nothing; the good ones are remembered.
    assert await log.ingest([envelope("b", tenant="attacker")], [KEEP]) == [True]
    assert await log.ingest(good, [KEEP] * 3) == [False] * 3


async def test_a_duplicate_across_requests_of_a_retried_group_is_still_counted_once(log: EmbeddedLog) -> None:
    first, copy = envelope("same"), envelope("same")
    bad = envelope("b", source="\ud800")
    answers = await asyncio.gather(
        log.ingest([first], [KEEP]),
        log.ingest([bad], [KEEP], [b"{}"]),
        log.ingest([copy], [KEEP]),
        return_exceptions=True,
    )
    assert answers[0] == [True] and answers[2] == [False]
    assert await stored(log) == [("victim", "same")]


async def test_values_must_match_the_envelopes(log: EmbeddedLog) -> None:
    with pytest.raises(ValueError):
        await log.ingest([envelope("x")], [KEEP], [])


async def test_a_failure_of_the_log_itself_fails_the_group_at_once(log: EmbeddedLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Locked, full, broken: each request alone would meet it again, so nothing is retried."""
    calls = []

    def locked(db, requests):  # type: ignore[no-untyped-def]
        calls.append(len(requests))
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(log, "_ingest", locked)
    answers = await asyncio.gather(
        *(log.ingest([envelope(f"x{i}")], [KEEP]) for i in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(answer, LogUnavailable) for answer in answers)
    assert calls == [3]
