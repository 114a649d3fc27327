"""ops.bench.common's reading of the shared services on the real ones: Redis's keys and AOF
rewrites, and the broker's topics, as quota_consume reports them at its start and per phase."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
from redis.exceptions import ResponseError

from ops.bench import common

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_redis_state_counts_keys_and_a_rewrite_begun_between_two_readings(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"bench-state-{uuid.uuid4().hex}"
    try:
        before = common.redis_state(redis_url)
        client.set(key, "1")
        try:
            client.bgrewriteaof()
        except ResponseError:
            pass  # one already under way (another test's writes): it counts too
        deadline = time.monotonic() + 30
        while common.redis_state(redis_url)["aof_rewrite_in_progress"] and time.monotonic() < deadline:
            time.sleep(0.05)
        after = common.redis_state(redis_url)
    finally:
        client.delete(key)
        client.close()
    assert after["aof_rewrites"] >= 1, "Redis runs with the AOF (ops/services/redis.sh) and names this field"
    assert common.rewrites_between(before, after) >= 1
    assert after["keys"] >= 1 and after["used_memory_bytes"] > 0


async def test_kafka_topics_counts_the_brokers_topics_without_its_own(
    kafka_servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    monkeypatch.setattr(common, "KAFKA", kafka_servers)
    prefix = f"bench-state-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}.usage", 1, 1)])

        async def listed() -> list[str]:
            return sorted(t for t in await admin.list_topics() if not t.startswith("__"))

        # The other test workers create and delete topics all the while (a count taken before and
        # one after compared nothing): the count is read between two listings that agree.
        for _ in range(50):
            first = await listed()
            counted = await common.kafka_topics()
            if first == await listed():
                break
        assert counted == len(first) and f"{prefix}.usage" in first, (counted, len(first))
    finally:
        await admin.close()
        await common.delete_topics(prefix)
    # A deletion reaches the broker's metadata a moment after the controller took it (under a busy
    # suite, more than one listing later): the topic is gone within seconds, not at the next listing.
    async with common.kafka_admin() as check:
        deadline = time.monotonic() + 15
        while left := [t for t in await check.list_topics() if t.startswith(prefix + ".")]:
            assert time.monotonic() < deadline, f"not deleted again: {left}"
            await asyncio.sleep(0.2)
