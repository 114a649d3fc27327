"""RedisDedupedSink on real Redis and Kafka: exactly one acceptance per (tenant, source, id)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from msgspec.structs import replace
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas.envelope import Envelope, decode
from schemas.topics import Topics
from streams.kafka_log import KafkaLog
from streams.log import LogUnavailable, Outgoing
from streams.redis_dedupe import MARKER, RedisDedupedSink, seen_key
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
    async for key in client.scan_iter(match=f"omni:seen:{tenant}*", count=10_000):  # few round trips on a full Redis
        value = await client.get(key)
        if value and value.startswith(b"pending:"):
            await client.delete(MARKER + value.removeprefix(b"pending:").decode())
        await client.delete(key)
    await client.aclose()


async def hold(client: aioredis.Redis, key: str, request: str, marker: bytes | None = b"pending") -> None:
    """Make `key` claimed by another request, whose marker says `marker` (None: that request died)."""
    await client.set(key, b"pending:" + request.encode(), px=60_000)
    if marker is not None:
        await client.set(MARKER + request, marker, px=60_000)


async def state(client: aioredis.Redis, key: str) -> bytes | None:
    """done, pending or None (free), as the claim script reads a key."""
    value = await client.get(key)
    if value is None or value == b"done":
        return value
    return await client.get(MARKER + value.removeprefix(b"pending:").decode())


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
    assert await state(raw_redis, seen_key(event)) == b"done"
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
    await hold(raw_redis, seen_key(finishing), f"{tenant}-finishing")
    await hold(raw_redis, seen_key(abandoned), f"{tenant}-failing")

    async def one_request_finishes_and_the_other_fails() -> None:
        await asyncio.sleep(0.2)
        await raw_redis.set(MARKER + f"{tenant}-finishing", b"done", px=60_000)
        await raw_redis.delete(seen_key(abandoned), MARKER + f"{tenant}-failing")  # it gave its claims back

    batch = [finishing, abandoned]
    answer, _ = await asyncio.gather(sink.ingest(batch, [keep(e) for e in batch]), one_request_finishes_and_the_other_fails())
    assert answer == [False, True]


async def test_the_claims_of_a_request_that_died_are_taken_over_at_once(
    sink: RedisDedupedSink, kafka_log: KafkaLog, topics: Topics, raw_redis: aioredis.Redis, tenant: str
) -> None:
    # Its process died between claim and append: its marker lapsed after claim_ttl, its keys stay.
    orphan = usage_event(tenant, "orphan")
    await hold(raw_redis, seen_key(orphan), f"{tenant}-dead", marker=None)
    assert await sink.ingest([orphan], [keep(orphan)]) == [True]
    assert [e.source_id for e in await on_topic(kafka_log, topics)] == ["orphan"]
    assert await state(raw_redis, seen_key(orphan)) == b"done"


async def test_a_claim_held_too_long_is_a_503_not_a_success(
    kafka_log: KafkaLog, redis_url: str, topics: Topics, raw_redis: aioredis.Redis, tenant: str
) -> None:
    impatient = RedisDedupedSink(kafka_log, redis_url, topics, wait_timeout=0.3)
    stuck = usage_event(tenant, "stuck")
    await hold(raw_redis, seen_key(stuck), f"{tenant}-slow")
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


async def test_new_duplicate_and_pending_keys_of_one_batch_resolve_together(
    sink: RedisDedupedSink, kafka_log: KafkaLog, topics: Topics, raw_redis: aioredis.Redis, tenant: str
) -> None:
    seen, held, fresh, earlier = (usage_event(tenant, name) for name in ("seen", "held", "fresh", "earlier"))
    await hold(raw_redis, seen_key(seen), f"{tenant}-finished", marker=b"done")
    await raw_redis.set(seen_key(earlier), b"done", px=60_000)  # as earlier versions marked keys
    await hold(raw_redis, seen_key(held), f"{tenant}-holder")

    async def holder_finishes() -> None:
        await asyncio.sleep(0.2)
        await raw_redis.set(MARKER + f"{tenant}-holder", b"done", px=60_000)

    batch = [held, seen, fresh, replace(fresh, id=str(uuid.uuid4())), earlier]
    answer, _ = await asyncio.gather(sink.ingest(batch, [keep(e) for e in batch]), holder_finishes())

    assert answer == [False, False, True, False, False]
    assert [e.source_id for e in await on_topic(kafka_log, topics)] == ["fresh"]
    assert await state(raw_redis, seen_key(fresh)) == b"done"


async def test_each_key_outlives_its_own_keep_until(sink: RedisDedupedSink, raw_redis: aioredis.Redis, tenant: str) -> None:
    events = [usage_event(tenant, f"e{i}") for i in range(3)]
    until = [datetime.now(UTC) + timedelta(days=days) for days in (1, 3, 6)]

    assert await sink.ingest(events, until) == [True, True, True]

    latest = int(max(until).timestamp() * 1000)  # one expiry for the batch: its latest keep_until
    for event in events:
        key = seen_key(event)
        assert await state(raw_redis, key) == b"done"
        marker = MARKER + (await raw_redis.get(key)).removeprefix(b"pending:").decode()
        assert await raw_redis.pexpiretime(key) == await raw_redis.pexpiretime(marker) == latest


async def test_a_batch_costs_two_redis_round_trips_and_one_write_per_key(
    sink: RedisDedupedSink, raw_redis: aioredis.Redis, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = usage_event(tenant, "warm")
    await sink.ingest([warm], [keep(warm)])  # the scripts are known to the server from now on
    commands: list[str] = []
    send = sink.redis.execute_command

    async def counted(*args: object, **options: object) -> object:
        commands.append(str(args[0]))
        return await send(*args, **options)

    monkeypatch.setattr(sink.redis, "execute_command", counted)
    batch = [usage_event(tenant, f"r{i}") for i in range(500)]
    assert await sink.ingest(batch, [keep(e) for e in batch]) == [True] * 500
    assert commands == ["EVALSHA", "SET"]  # claim every key, then mark the request done: one key

    commands.clear()
    assert await sink.ingest(batch, [keep(e) for e in batch]) == [False] * 500
    assert commands == ["EVALSHA"]  # every key answered `done` with the claim: nothing else to ask


async def test_scripts_unknown_to_the_server_are_loaded_again(
    sink: RedisDedupedSink, raw_redis: aioredis.Redis, tenant: str
) -> None:
    first, second = usage_event(tenant, "before-flush"), usage_event(tenant, "after-flush")
    assert await sink.ingest([first], [keep(first)]) == [True]
    await raw_redis.script_flush()  # as after a Redis restart or failover
    assert await sink.ingest([second, first], [keep(second), keep(first)]) == [True, False]


class FailingLog:
    """Stands for the Kafka log: runs `meanwhile`, then fails like an unreachable broker."""

    produce_timeout = 1.0

    def __init__(self, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self.meanwhile = meanwhile

    async def append(self, topic: str, items: Sequence[Outgoing]) -> None:
        await self.meanwhile()
        raise LogUnavailable("the broker is gone")


async def test_a_failed_append_gives_back_only_the_claims_still_ours(
    redis_url: str, topics: Topics, raw_redis: aioredis.Redis, tenant: str
) -> None:
    ours, lost_meanwhile = usage_event(tenant, "ours"), usage_event(tenant, "taken-over")
    our_marker: list[str] = []

    async def another_request_takes_one_over() -> None:
        our_marker.append(MARKER + (await raw_redis.get(seen_key(ours))).removeprefix(b"pending:").decode())
        # Our marker lapsed during a slow append and another request took the key over.
        await hold(raw_redis, seen_key(lost_meanwhile), f"{tenant}-another")

    failing = RedisDedupedSink(FailingLog(another_request_takes_one_over), redis_url, topics)  # type: ignore[arg-type]
    try:
        with pytest.raises(LogUnavailable):
            await failing.ingest([ours, lost_meanwhile], [keep(ours), keep(lost_meanwhile)])
    finally:
        await failing.close()
    assert await raw_redis.get(seen_key(ours)) is None
    assert await raw_redis.get(seen_key(lost_meanwhile)) == f"pending:{tenant}-another".encode()
    assert our_marker and await raw_redis.exists(*our_marker) == 0


async def test_redis_failing_after_the_append_still_accepts(
    sink: RedisDedupedSink,
    kafka_log: KafkaLog,
    topics: Topics,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    event = usage_event(tenant, "durable")

    async def redis_gone(*args: object, **options: object) -> object:
        raise RedisConnectionError("Redis went away after the claim")

    monkeypatch.setattr(sink.redis, "set", redis_gone)  # the marker's write, after the append
    # The event is durable on the log: the answer is an acceptance, not a 503 (the marker lapses).
    assert await sink.ingest([event], [keep(event)]) == [True]
    assert [e.source_id for e in await on_topic(kafka_log, topics)] == ["durable"]
    assert "could not mark them done" in caplog.text


async def test_keep_for_bounds_how_long_redis_keeps_a_key(
    kafka_log: KafkaLog, redis_url: str, topics: Topics, raw_redis: aioredis.Redis, tenant: str
) -> None:
    """OMNI_REDIS_DEDUPE_SECONDS: the key and its request's marker live `keep_for`, not the whole window;
    within it a repeat is still a duplicate (past it, the usage projector drops the repeat instead)."""
    bounded = RedisDedupedSink(kafka_log, redis_url, topics, keep_for=120.0)
    try:
        event = usage_event(tenant, "evt-bounded")
        assert await bounded.ingest([event], [keep(event)]) == [True]
        key_ttl = await raw_redis.pttl(seen_key(event))
        marker = MARKER + (await raw_redis.get(seen_key(event))).removeprefix(b"pending:").decode()
        for ttl in (key_ttl, await raw_redis.pttl(marker)):
            assert 110_000 < ttl <= 120_000
        assert await state(raw_redis, seen_key(event)) == b"done"
        assert await bounded.ingest([replace(event, id=str(uuid.uuid4()))], [keep(event)]) == [False]
        # An event whose own window ends sooner keeps that end.
        old = replace(usage_event(tenant, "evt-old"), event_time=datetime.now(UTC) - timedelta(days=7))
        assert await bounded.ingest([old], [old.event_time + timedelta(days=7, seconds=30)]) == [True]
        assert 0 < await raw_redis.pttl(seen_key(old)) <= 31_000
    finally:
        await bounded.close()
