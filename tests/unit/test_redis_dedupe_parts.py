"""The parts of the Redis de-duplicating sink that need no Redis: the key of an event's identity, a
round's claim token and marker, the first copy of each event in a batch, the settings a sink derives
(a claim outlives the append it protects), and what it refuses before it claims anything. The claim
itself (the Lua scripts, the rounds, give-back and marking done) is tested against a real Redis in
tests/integration/test_redis_dedupe.py, and left out of mutation testing."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from schemas.envelope import Envelope
from schemas.topics import Topics
from streams.kafka_log import KafkaLog
from streams.redis_dedupe import CLAIM, MARKER, PENDING, RELEASE, Claim, RedisDedupedSink, _first_occurrences, seen_key

NOW = datetime.now(UTC)
TOPICS = Topics(prefix="r", usage_partitions=2)
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens there: a call to Redis would fail


def envelope(source_id: str, *, tenant: str = "t1", source: str = "gw", data: object = None) -> Envelope:
    return Envelope(
        id=f"id-{source_id}", type="call", tenant_id=tenant, source=source, source_id=source_id, event_time=NOW,
        recorded_time=NOW, data=data,
    )  # fmt: skip


def test_an_events_key_is_its_tenant_and_the_digest_of_its_source_and_id() -> None:
    digest = hashlib.sha256(b"gw\x00e1").hexdigest()
    assert seen_key(envelope("e1")) == f"omni:seen:t1:{digest}"
    # The NUL between them keeps ("a", "bc") and ("ab", "c") apart.
    assert seen_key(envelope("bc", source="a")) != seen_key(envelope("c", source="ab"))


def test_each_round_claims_with_a_token_of_its_own() -> None:
    first, second = Claim.new(123), Claim.new(123)
    token = first.marker.removeprefix(MARKER)
    assert len(token) == 32 and int(token, 16) >= 0
    assert first.value == PENDING + token.encode()
    assert first.marker == "omni:claim:" + token and first.value.startswith(b"pending:")
    assert first.keep_until_ms == 123
    assert second.marker != first.marker


def test_a_batch_claims_each_event_once_at_its_first_copy() -> None:
    batch = [envelope("a"), envelope("b"), envelope("a"), envelope("a", tenant="t2"), envelope("b")]
    assert _first_occurrences(batch) == {seen_key(batch[0]): 0, seen_key(batch[1]): 1, seen_key(batch[3]): 3}


@pytest.mark.parametrize(("claim_ttl", "produce_timeout", "claim_ttl_ms"), [(30.0, 10.0, 30_000), (5.0, 10.0, 11_000)])
async def test_a_claim_outlives_the_append_it_protects(claim_ttl: float, produce_timeout: float, claim_ttl_ms: int) -> None:
    sink = RedisDedupedSink(
        KafkaLog("127.0.0.1:1", TOPICS, produce_timeout=produce_timeout), NOWHERE, TOPICS, claim_ttl=claim_ttl
    )
    try:
        assert sink.claim_ttl_ms == claim_ttl_ms
        assert (sink.keep_for_ms, sink.wait_timeout) == (None, 15.0)
    finally:
        await sink.close()


async def test_a_sink_keeps_its_settings_and_its_scripts() -> None:
    log = KafkaLog("127.0.0.1:1", TOPICS)
    sink = RedisDedupedSink(log, NOWHERE, TOPICS, wait_timeout=2.5, keep_for=1.5)
    try:
        assert (sink.log, sink.topics, sink.wait_timeout, sink.keep_for_ms) == (log, TOPICS, 2.5, 1_500)
        assert sink._claim_all.sha == hashlib.sha1(CLAIM.encode()).hexdigest()
        assert sink._release.sha == hashlib.sha1(RELEASE.encode()).hexdigest()
        options = sink.redis.connection_pool.connection_kwargs
        assert (options["socket_connect_timeout"], options["socket_timeout"], options["health_check_interval"]) == (2.0, 5.0, 30)
    finally:
        await sink.close()


async def test_what_is_refused_is_refused_before_anything_is_claimed() -> None:
    sink = RedisDedupedSink(KafkaLog("127.0.0.1:1", TOPICS), NOWHERE, TOPICS)
    try:
        keep = [NOW + timedelta(days=7)]
        with pytest.raises(ValueError, match="^one keep_until and one value per envelope$"):
            await sink.ingest([envelope("a")], [])
        with pytest.raises(ValueError, match="^one keep_until and one value per envelope$"):
            await sink.ingest([envelope("a")], keep, [b"{}", b"{}"])
        assert await sink.ingest([], []) == []
        deep: object = 1
        for _ in range(300):
            deep = [deep]
        with pytest.raises(orjson.JSONEncodeError):  # encoded before the claim: not a Redis failure
            await sink.ingest([envelope("a", data=deep)], keep)
    finally:
        await sink.close()
