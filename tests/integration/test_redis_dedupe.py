"""RedisDedupedSink on real Redis and Kafka: exactly one acceptance per (tenant, source, id)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from schemas.envelope import Envelope, decode
from schemas.topics import Topics
from streams.kafka_log import KafkaLog
from streams.log import LogUnavailable
from streams.redis_dedupe import RedisDedupedSink, seen_key
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def usage_event(tenant: str, source_id: str, *, source: str = "gateway") -> Envelope:
    now = datetime.now(UTC)
    return Envelope(
        id=str(uuid.uuid4()),
        type="ai.inference",
        tenant_id=tenant,
        source=source,
        source_id=source_id,
        event_time=now,
        recorded_time=now,
        data={"tokens": 7},
    )


def keep(envelope: Envelope) -> datetime:
    return envelope.event_time + timedelta(days=7)


@pytest.fixture
async def sink(kafka_log: KafkaLog, redis_url: str, topics: Topics) -> AsyncIterator[RedisDedupedSink]:
    deduped = RedisDedupedSink(kafka_log, redis_url, topics, wait_timeout=5.0)
    yield deduped
    await deduped.close()


@pytest.fixture
async def raw_redis(redis_url: str, tenant: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client; afterwards it removes the test tenant's de-duplication keys."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    async for key in client.scan_iter(match=f"omni:seen:{tenant}*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
def tenant(prefix: str) -> str:
    """Unique per test, so tests never see each other's keys (all start with it)."""
    return f"{prefix}-tenant"


async def on_topic(log: KafkaLog, topics: Topics) -> list[Envelope]:
    found = []
    for partition, end in (await log.end_offsets(topics.usage)).items():
        start = 0
        while start < end:
            records = await log.read(topics.usage, partition, start, 1000)
            found += [decode(r.value) for r in records]
            start = records[-1].offset + 1
    return found


async def test_the_same_event_sent_ten_times_at_once_is_accepted_once(
    sink: RedisDedupedSink, kafka_log: KafkaLog, topics: Topics, raw_redis: aioredis.Redis, tenant: str
) -> None:
    event = usage_event(tenant, "evt-1")
    copies = [replace(event, id=str(uuid.uuid4())) for _ in range(10)]  # fresh log ids, same identity

    answers = await asyncio.gather(*(sink.ingest([copy], [keep(copy)]) for copy in copies))

    assert sorted(answers) == [[False]] * 9 + [[True]]
    stored = await on_topic(kafka_log, topics)
    assert [(e.tenant_id, e.source, e.source_id) for e in stored] == [event.dedupe_key]
    assert await raw_redis.get(seen_key(event)) == b"done"
    # Kept until keep_until (PXAT), not for the short claim TTL.
    assert await raw_redis.pttl(seen_key(event)) > timedelta(days=6).total_seconds() * 1000
    # And later, one more retry is still a duplicate.
    assert await sink.ingest([copies[0]], [keep(copies[0])]) == [False]


async def test_a_repeat_inside_one_batch_is_a_duplicate(
    sink: RedisDedupedSink, kafka_log: KafkaLog, topics: Topics, raw_redis: aioredis.Redis, tenant: str
) -> None:
    a, b = usage_event(tenant, "a"), usage_event(tenant, "b")
    a_again = replace(a, id=str(uuid.uuid4()))
    other_source = usage_event(tenant, "a", source="another-gateway")

    batch = [a, a_again, b, other_source]
    assert await sink.ingest(batch, [keep(e) for e in batch]) == [True, False, True, True]

    stored = await on_topic(kafka_log, topics)
    assert sorted(e.source_id + "@" + e.source for e in stored) == ["a@another-gateway", "a@gateway", "b@gateway"]
    # One tenant's events keep their order on its partition.
    assert [e.id for e in stored] == [a.id, b.id, other_source.id]


async def test_a_failed_append_gives_the_claim_back(
    redis_url: str, topics: Topics, kafka_log: KafkaLog, sink: RedisDedupedSink, raw_redis: aioredis.Redis, tenant: str
) -> None:
    dead = KafkaLog(f"127.0.0.1:{free_port()}", topics, produce_timeout=1.0)
    failing = RedisDedupedSink(dead, redis_url, topics)
    event = usage_event(tenant, "evt-retry")
    try:
        with pytest.raises(LogUnavailable):
            await failing.ingest([event], [keep(event)])
        assert await raw_redis.get(seen_key(event)) is None  # nothing claimed as seen
    finally:
        await failing.close()
        await dead.close()
    # The client's retry, through a working log, is accepted.
    assert await sink.ingest([event], [keep(event)]) == [True]
    assert len(await on_topic(kafka_log, topics)) == 1


async def test_a_pending_claim_resolves_to_duplicate_or_is_taken_over(
    sink: RedisDedupedSink, raw_redis: aioredis.Redis, tenant: str
) -> None:
    finishing, abandoned = usage_event(tenant, "finishing"), usage_event(tenant, "abandoned")
    await raw_redis.set(seen_key(finishing), b"pending:someone-else", px=60_000)
    await raw_redis.set(seen_key(abandoned), b"pending:someone-else", px=60_000)

    async def other_request_finishes_and_other_fails() -> None:
        await asyncio.sleep(0.2)
        await raw_redis.set(seen_key(finishing), b"done", px=60_000)
        await raw_redis.delete(seen_key(abandoned))

    batch = [finishing, abandoned]
    answer, _ = await asyncio.gather(sink.ingest(batch, [keep(e) for e in batch]), other_request_finishes_and_other_fails())
    assert answer == [False, True]


async def test_a_claim_held_too_long_is_a_503_not_a_success(
    kafka_log: KafkaLog, redis_url: str, topics: Topics, raw_redis: aioredis.Redis, tenant: str
) -> None:
    impatient = RedisDedupedSink(kafka_log, redis_url, topics, wait_timeout=0.3)
    stuck = usage_event(tenant, "stuck")
    await raw_redis.set(seen_key(stuck), b"pending:someone-else", px=60_000)
    try:
        with pytest.raises(LogUnavailable):
            await impatient.ingest([stuck], [keep(stuck)])
    finally:
        await impatient.close()


async def test_redis_down_is_log_unavailable(kafka_log: KafkaLog, topics: Topics, tenant: str) -> None:
    no_redis = RedisDedupedSink(kafka_log, f"redis://127.0.0.1:{free_port()}/0", topics)
    event = usage_event(tenant, "no-redis")
    try:
        with pytest.raises(LogUnavailable):
            await no_redis.ingest([event], [keep(event)])
    finally:
        await no_redis.close()
    assert await on_topic(kafka_log, topics) == []
