"""Kafka mode's API needs Redis for every ingest and consume (the de-duplication claims, the quota
counters): its /readyz says so. A walkthrough pointed `omni serve` at a Redis that was not there:
/readyz answered 200 `ready` while every POST /v1/events and every consume answered 503, so a load
balancer kept sending them traffic it could only refuse."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.conftest import cloud_event
from tests.e2e.conftest import Omni, kafka_settings, served, services_or_skip


def closed_port() -> int:
    """A port nothing listens on (bound for a moment, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["redis-answers", "redis-away"])
async def omni_in_kafka_mode(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Omni, bool]]:
    services_or_skip()
    away = request.param == "redis-away"
    overrides = {"redis_url": f"redis://127.0.0.1:{closed_port()}/0"} if away else {}
    async with served(kafka_settings(uuid.uuid4().hex[:12], **overrides)) as running:
        yield running, away


async def test_readyz_checks_redis_which_ingest_needs(omni_in_kafka_mode: tuple[Omni, bool]) -> None:
    omni, away = omni_in_kafka_mode
    _, key = await omni.tenant()
    ready = await omni.client.get("/readyz")
    ingest = await omni.send(key, [cloud_event("e1")])
    checks = ready.json()["checks"]
    assert set(checks) == {"log", "event_store", "views", "redis"}
    if away:
        assert ingest.status_code == 503, ingest.text
        # Redis named, not the log: Kafka was fine all along.
        assert ingest.json()["type"] == "https://omni.dev/problems/counters-unavailable", ingest.text
        assert ingest.headers["retry-after"] == "1"
        assert ready.status_code == 503, ready.text
        assert checks["redis"].startswith("unavailable: "), checks
        assert {name: state for name, state in checks.items() if name != "redis"} == {
            "log": "ok",
            "event_store": "ok",
            "views": "ok",
        }
    else:
        assert ingest.status_code == 202, ingest.text
        assert ready.status_code == 200, ready.text
        assert checks["redis"] == "ok"
