"""Kafka mode's quota ledger on real Redis: a consume whose append fails counts nothing; facts are
counted once per offset, and a gap in what was counted drops the counters for a rebuild."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from projections.meters import MeterIndex
from projections.quotas import CONSUME_SOURCE, QUOTA_CONSUME, period_of, usage_deltas
from schemas.envelope import Envelope, encode
from schemas.meters import Aggregation, MeterDefinition
from schemas.plans import Entitlement, Period
from schemas.topics import Topics
from stores.database import SqliteDatabase
from stores.schema import SCHEMA as VIEW_SCHEMA
from streams.embedded_log import EmbeddedLog
from streams.kafka_log import KafkaLog
from streams.log import LogRecord, LogUnavailable
from streams.quota_ledger import ConsumeRequest, caught_up_mark
from streams.redis_quotas import GENERATION_FIELD, QuotaKeys, RedisFactLedger, RedisQuotaLedger
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.redis, pytest.mark.kafka]

TOKENS = MeterDefinition(slug="tokens", event_type="inference", aggregation=Aggregation.SUM, value_property="$.data.tokens")
NOW = datetime.now(UTC)


@pytest.fixture
def topics() -> Topics:
    return Topics(prefix=f"q-{uuid.uuid4().hex[:10]}", usage_partitions=2)


@pytest.fixture
async def raw(redis_url: str, topics: Topics) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    async for key in client.scan_iter(match=QuotaKeys(topics).prefix + "*", count=10_000):
        await client.delete(key)
    await client.aclose()


def usage(tenant: str, key: str, tokens: int, *, consumed: bool = False) -> Envelope:
    return Envelope(
        id=str(uuid.uuid4()),
        type="inference",
        tenant_id=tenant,
        source=CONSUME_SOURCE if consumed else "gw",
        source_id=key,
        event_time=NOW,
        recorded_time=NOW,
        data={"tokens": tokens},
        extensions={QUOTA_CONSUME: "D:x"} if consumed else {},
    )


def request(tenant: str, key: str, amount: int, limit: int) -> ConsumeRequest:
    event = usage(tenant, key, amount, consumed=True)
    return ConsumeRequest(
        tenant_id=tenant,
        meter="tokens",
        amount=Decimal(amount),
        idempotency_key=key,
        subject=None,
        entitlement=Entitlement(meter="tokens", limit=Decimal(limit), period=Period.DAY),
        period=period_of(NOW, Period.DAY),
        usage=(event, encode(event)),
        refusal=event,
    )


async def test_a_consume_whose_append_fails_counts_nothing(
    redis_url: str, topics: Topics, raw: aioredis.Redis, tmp_path: Path
) -> None:
    views = SqliteDatabase(tmp_path / "views.sqlite")
    views.migrate(VIEW_SCHEMA)
    dead = KafkaLog(f"127.0.0.1:{free_port()}", topics, produce_timeout=1)  # nothing listens there
    ledger = RedisQuotaLedger(redis_url, topics, dead, views, grace=0, keep_seconds=60)
    await raw.set(QuotaKeys(topics).built, "e1")  # counters of epoch e1, all zero
    try:
        with pytest.raises(LogUnavailable):
            await ledger.consume(request("t1", "req-1", 4, limit=10))
        assert await ledger.used("t1", "tokens", period_of(NOW, Period.DAY)) == 0
        assert not await raw.exists(QuotaKeys(topics).answer("t1", "req-1")), "the retry decides again"

        working = EmbeddedLog(tmp_path / "log.sqlite", topics)
        await working.start()
        ledger.log = working
        retried = await ledger.consume(request("t1", "req-1", 4, limit=10))
        assert (retried.decision.accepted, retried.decision.used, retried.replayed) == (True, Decimal(4), False)
        assert sum((await working.end_offsets(topics.usage)).values()) == 1
        again = await ledger.consume(request("t1", "req-1", 4, limit=10))
        assert (again.replayed, again.decision.used) == (True, Decimal(4))
        assert sum((await working.end_offsets(topics.usage)).values()) == 1, "a retry appends nothing"
        await working.close()
    finally:
        await ledger.close()
        views.close()


async def test_an_answer_is_kept_after_the_consume_is_answered_and_before_the_next_decision(
    redis_url: str, topics: Topics, raw: aioredis.Redis, tmp_path: Path
) -> None:
    """The call that keeps an answer is not awaited by its consume: it goes with the next decision
    (kept first, then decided), or alone; closing the ledger sends the answers still to keep."""
    views = SqliteDatabase(tmp_path / "views.sqlite")
    views.migrate(VIEW_SCHEMA)
    log = EmbeddedLog(tmp_path / "log.sqlite", topics)
    await log.start()
    ledger = RedisQuotaLedger(redis_url, topics, log, views, grace=0, keep_seconds=60)
    keys = QuotaKeys(topics)
    await raw.set(keys.built, "e1")
    # Hold every CONSUME call that only keeps answers: the consume must answer without waiting for it.
    gate = asyncio.Event()
    evalsha = ledger._pipe.evalsha

    async def gated(sha: str, source: str, keys_: list[Any], args: list[Any]) -> Any:
        if len(keys_) > 1 and int(args[3]) == len(keys_) - 1:  # every key after `built` is an answer to keep
            await gate.wait()
        return await evalsha(sha, source, keys_, args)

    ledger._pipe.evalsha = gated  # type: ignore[method-assign]
    try:
        first = await asyncio.wait_for(ledger.consume(request("t1", "req-1", 4, limit=10)), 10)
        assert (first.decision.accepted, first.replayed) == (True, False)
        pending = (await raw.get(keys.answer("t1", "req-1")) or b"").decode()
        assert pending.startswith("pending|"), "answered before its answer is kept"
        ledger._pipe.evalsha = evalsha  # type: ignore[method-assign]
        gate.set()
        # The retry, at once: its decision goes after the call that keeps the first answer, on the
        # same connection (or in that call), so it finds the answer kept.
        again, other = await asyncio.gather(
            ledger.consume(request("t1", "req-1", 4, limit=10)), ledger.consume(request("t1", "req-2", 4, limit=10))
        )
        assert (again.replayed, again.in_progress, again.decision.used) == (True, False, Decimal(4))
        assert (other.replayed, other.decision.used) == (False, Decimal(8))
        assert (await raw.get(keys.answer("t1", "req-1")) or b"").startswith(b"done|")
        assert sum((await log.end_offsets(topics.usage)).values()) == 2, "the retry appends nothing"
        last = await ledger.consume(request("t1", "req-3", 1, limit=10))
        assert last.decision.used == Decimal(9)
    finally:
        await ledger.close()  # at once: it sends req-3's answer to keep before it closes the connection
        await log.close()
        views.close()
    assert (await raw.get(keys.answer("t1", "req-3")) or b"").startswith(b"done|")


async def test_spaced_calls_group_concurrent_consumes_and_stay_exact(
    redis_url: str, topics: Topics, raw: aioredis.Redis, tmp_path: Path
) -> None:
    """With calls held apart (OMNI_CONSUME_GROUP_SPACING_MS), consumes arriving in a trickle share
    calls, and a hard limit still holds exactly: accepted total = the limit, each retry its first answer."""
    views = SqliteDatabase(tmp_path / "views.sqlite")
    views.migrate(VIEW_SCHEMA)
    log = EmbeddedLog(tmp_path / "log.sqlite", topics)
    await log.start()
    ledger = RedisQuotaLedger(redis_url, topics, log, views, grace=0, keep_seconds=60, group_spacing=0.02)
    await raw.set(QuotaKeys(topics).built, "e1")
    starts: list[float] = []  # each call's start, on the loop's clock (as GroupCall spaces them)
    evalsha = ledger._pipe.evalsha

    async def counted(sha: str, source: str, keys_: list[Any], args: list[Any]) -> Any:
        starts.append(asyncio.get_running_loop().time())
        return await evalsha(sha, source, keys_, args)

    ledger._pipe.evalsha = counted  # type: ignore[method-assign]

    async def trickle(n: int) -> Any:
        await asyncio.sleep(n * 0.002)  # 60 consumes over 120 ms: a steady rate, not one burst
        return await ledger.consume(request("t1", f"req-{n}", 3, limit=100))

    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*(trickle(n) for n in range(60))), 30)
        accepted = [o for o in outcomes if o.decision.accepted]
        assert len(accepted) * 3 == 99, "33 of 3 fit under 100; nothing past it"
        # Calls start at least the spacing apart, however slow the machine (a busy one only spreads
        # them further; the slack is for the steps between GroupCall's clock and this one), and so
        # the consumes share them.
        gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
        assert min(gaps) >= 0.015, f"calls {min(gaps) * 1000:.1f} ms apart: not spaced by 20 ms"
        assert len(starts) < 60, f"{len(starts)} calls for 60 consumes 2 ms apart: the spacing did not group them"
        retries = await asyncio.gather(*(ledger.consume(request("t1", f"req-{n}", 3, limit=100)) for n in range(60)))
        assert all(r.replayed for r in retries)
        assert [r.decision.accepted for r in retries] == [o.decision.accepted for o in outcomes]
        records = sum((await log.end_offsets(topics.usage)).values())
        assert records == 60, "one record per consume (its usage, or its refusal); the retries append nothing"
    finally:
        await ledger.close()
        await log.close()
        views.close()


async def test_facts_count_once_per_offset_and_a_gap_drops_the_counters(
    redis_url: str, topics: Topics, raw: aioredis.Redis
) -> None:
    keys = QuotaKeys(topics)
    await raw.set(keys.built, "e1")
    facts = RedisFactLedger(redis_url, topics)
    meters = MeterIndex([TOKENS])
    topic = topics.usage

    def batch(first: int, tokens: list[int], *, consumed_at: int | None = None) -> Callable[[int], dict[Any, Decimal]]:
        """A batch's facts from an offset on, as the meter projector hands them to the ledger."""
        events = [
            (LogRecord(topic, 0, first + i, "t1", b""), usage("t1", f"f{first + i}", t, consumed=first + i == consumed_at))
            for i, t in enumerate(tokens)
        ]
        return lambda since: usage_deltas(meters, [e for r, e in events if r.offset >= since], facts_only=True)

    day = f"tokens|{period_of(NOW, Period.DAY).text}"
    counters = keys.counters("e1", "t1")
    facts.add_facts(topic, 0, 0, 3, batch(0, [5, 7, 9], consumed_at=2), 0)
    assert int(await raw.hget(counters, day) or 0) == 12 * 1000, "consume's own amount is left out (milli-units)"
    facts.add_facts(topic, 0, 0, 3, batch(0, [5, 7, 9], consumed_at=2), 0)  # the batch again, after a failed commit
    assert int(await raw.hget(counters, day) or 0) == 12 * 1000
    facts.add_facts(topic, 0, 1, 4, batch(1, [7, 9, 11], consumed_at=2), 0)  # overlapping: only offset 3 is new
    assert int(await raw.hget(counters, day) or 0) == 23 * 1000
    facts.add_facts(topic, 0, 4, 6, lambda since: {}, 0)  # nothing kept (duplicates): the mark moves all the same
    assert int(await raw.hget(keys.marks("e1"), f"{topic}/0") or 0) == 6
    facts.add_facts(topic, 0, 9, 10, batch(9, [1]), 0)  # 6..8 folded without being counted
    assert not await raw.exists(keys.built), "the counters are dropped, to be rebuilt"
    facts.redis.close()


async def test_counters_built_from_swapped_out_views_count_nothing_and_are_dropped(
    redis_url: str, topics: Topics, raw: aioredis.Redis
) -> None:
    """A fold that read the meters' views of another generation than the counters were built from
    (a replay swapped them in since) counts nothing in them and drops them for a rebuild, in the
    live fold's script and in a catch-up's."""
    keys = QuotaKeys(topics)
    meters = MeterIndex([TOKENS])
    topic = topics.usage
    day = f"tokens|{period_of(NOW, Period.DAY).text}"
    counters = keys.counters("e1", "t1")
    event = usage("t1", "f0", 5, consumed=False)
    facts = RedisFactLedger(redis_url, topics)
    try:
        await raw.set(keys.built, "e1")
        await raw.hset(keys.marks("e1"), GENERATION_FIELD, 3)
        facts.add_facts(topic, 0, 0, 1, lambda since: usage_deltas(meters, [event], facts_only=True), 3)
        assert int(await raw.hget(counters, day) or 0) == 5000, "the same generation: counted"
        facts.add_facts(topic, 0, 1, 2, lambda since: usage_deltas(meters, [event], facts_only=True), 4)
        assert int(await raw.hget(counters, day) or 0) == 5000 and not await raw.exists(keys.built)

        await raw.set(keys.built, "e1")
        mark = caught_up_mark(topic, 0, "tokens")
        facts.add_caught_up("tokens", topic, 0, 0, 1, lambda since, tail, consumed: {("t1", "tokens", day[7:]): Decimal(2)}, 4)
        assert int(await raw.hget(counters, day) or 0) == 5000 and not await raw.exists(keys.built)
        assert await raw.hget(keys.marks("e1"), mark) is None
    finally:
        facts.redis.close()


async def test_a_fact_past_64_bits_saturates_its_counter_and_fails_no_one(
    redis_url: str, topics: Topics, raw: aioredis.Redis, tmp_path: Path
) -> None:
    """Admission takes values up to 10^38: one such fact (a mis-sent unit, a hostile tenant) used to
    overflow Redis's 64-bit HINCRBY, so its batch went uncounted for every tenant of the partition and
    every rebuild after it failed the same way (every consume 503). Now its counter saturates, past
    any limit, and the other tenant's counter and consumes go on exactly."""
    keys = QuotaKeys(topics)
    await raw.set(keys.built, "e1")
    facts = RedisFactLedger(redis_url, topics)
    meters = MeterIndex([TOKENS])
    topic = topics.usage
    day = f"tokens|{period_of(NOW, Period.DAY).text}"

    def add(offset: int, event: Envelope) -> None:
        facts.add_facts(topic, 0, offset, offset + 1, lambda since: usage_deltas(meters, [event], facts_only=True), 0)

    views = SqliteDatabase(tmp_path / "views.sqlite")
    views.migrate(VIEW_SCHEMA)
    log = EmbeddedLog(tmp_path / "log.sqlite", topics)
    await log.start()
    ledger = RedisQuotaLedger(redis_url, topics, log, views, grace=0, keep_seconds=60)
    try:
        add(0, usage("t1", "huge", 10**20))
        add(1, usage("t2", "small", 7))
        add(2, usage("t1", "huger", 10**30))
        assert await raw.exists(keys.built), "nothing was dropped for a rebuild"
        assert int(await raw.hget(keys.counters("e1", "t1"), day) or 0) == 2**53
        assert int(await raw.hget(keys.counters("e1", "t2"), day) or 0) == 7 * 1000
        assert (await ledger.consume(request("t2", "c1", 3, limit=10))).decision.used == 10
        assert not (await ledger.consume(request("t1", "c2", 1, limit=10))).decision.accepted, "far past any limit"
        for offset in (3, 4):  # two batches taking far more back than was ever counted
            add(offset, usage("t1", f"back-{offset}", -(10**32)))
        assert int(await raw.hget(keys.counters("e1", "t1"), day) or 0) == -(2**53), "below nothing, it saturates too"
        assert await raw.exists(keys.built)
    finally:
        facts.redis.close()
        await ledger.close()
        await log.close()
        views.close()
