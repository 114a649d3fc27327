"""Kafka mode's adapters as `build` wires them from the settings."""

from __future__ import annotations

import uuid

from omni.bootstrap import build
from streams.redis_dedupe import RedisDedupedSink
from tests.e2e.conftest import drop_kafka_state, kafka_settings, services_or_skip


async def test_the_redis_sink_keeps_keys_as_long_as_configured() -> None:
    services_or_skip()
    for configured, kept_ms in ((None, None), (3600, 3_600_000)):
        settings = kafka_settings(uuid.uuid4().hex[:12], redis_dedupe_seconds=configured)
        platform = build(settings)
        try:
            assert isinstance(platform.sink, RedisDedupedSink)
            assert platform.sink.keep_for_ms == kept_ms
        finally:
            await platform.stop()
            await drop_kafka_state(settings)
