"""An embedded-mode Omni served in-process over ASGI, with its state in a temporary folder."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from omni.bootstrap import Platform, build
from omni.settings import Mode, Settings
from schemas.topics import Topics

ADMIN = "test-admin-key"
BATCH = "application/cloudevents-batch+json"
SINGLE = "application/cloudevents+json"
GDPR_MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, base64: tests only


class Omni:
    """A client with the platform behind it, so tests can settle the runner deterministically."""

    def __init__(self, client: httpx.AsyncClient, platform: Platform, app: Any) -> None:
        self.client = client
        self.platform = platform
        self.app = app

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def settle(self) -> None:
        await self.app.state.api_calls.flush()
        await self.platform.settle()

    async def tenant(self, name: str = "acme", plan: str = "pro") -> tuple[str, str]:
        response = await self.client.post("/v1/tenants", json={"name": name, "plan": plan}, headers=self.auth(ADMIN))
        assert response.status_code == 201, response.text
        body = response.json()
        return body["id"], body["api_key"]

    async def meter(self, **definition: Any) -> None:
        response = await self.client.post("/v1/meters", json=definition, headers=self.auth(ADMIN))
        assert response.status_code == 201, response.text

    async def send(self, key: str, events: list[dict[str, Any]]) -> httpx.Response:
        import orjson

        return await self.client.post(
            "/v1/events", content=orjson.dumps(events), headers={**self.auth(key), "Content-Type": BATCH}
        )

    async def query(self, key: str, slug: str, **params: Any) -> list[dict[str, Any]]:
        response = await self.client.get(f"/v1/meters/{slug}/query", params=params, headers=self.auth(key))
        assert response.status_code == 200, response.text
        # Decimals, so the test sees exactly the digits the API wrote.
        return json.loads(response.text, parse_float=Decimal)["data"]  # type: ignore[no-any-return]


def embedded_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Embedded mode for tests that settle the views themselves: commands do not wait for them."""
    values: dict[str, Any] = {
        "mode": "embedded",
        "data_dir": data_dir,
        "admin_key": ADMIN,
        "usage_partitions": 3,
        "billing_auto_close": False,  # tests close their periods themselves
        "watch_seconds": 0.2,  # over ASGI (httpx) an answer is read whole: a live watch ends soon
    }
    return Settings(**(values | {"read_your_writes_seconds": 0} | overrides))


def kafka_settings(name: str, **overrides: Any) -> Settings:
    """Kafka mode on the test services, with topics and a schema of its own."""
    from tests.contract.conftest import DATABASE_URL

    values: dict[str, Any] = {
        "mode": "kafka",
        "admin_key": ADMIN,
        "usage_partitions": 3,
        "topic_prefix": f"e2e-{name}",
        "database_schema": f"e2e_{name}",
        "database_url": DATABASE_URL,
        "kafka_bootstrap_servers": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:19092"),
        "redis_url": os.environ.get("REDIS_URL", "redis://127.0.0.1:16379/0"),
        "produce_timeout_seconds": 5,
        "read_your_writes_seconds": 0,  # tests that settle the views themselves: commands do not wait
        "billing_auto_close": False,  # tests close their periods themselves
        "gdpr_master_key": GDPR_MASTER_KEY,  # embedded mode generates its own
        "watch_seconds": 0.2,  # over ASGI (httpx) an answer is read whole: a live watch ends soon
    }
    return Settings(**(values | overrides))


def services_or_skip() -> None:
    import socket

    from tests.contract.conftest import postgres_or_skip

    postgres_or_skip()
    host, _, port = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:19092").split(",")[0].partition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as down:
        if os.environ.get("OMNI_REQUIRE_SERVICES"):
            raise
        pytest.skip(f"Kafka unreachable: {down}")


@pytest.fixture(params=["embedded", "kafka"])
async def omni(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Omni]:
    """The same API, over each mode's adapters. Settling uses the in-process runner in both."""
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "data")
    else:
        services_or_skip()
        settings = kafka_settings(uuid.uuid4().hex[:12])
    async with served(settings) as running:
        yield running


@contextlib.asynccontextmanager
async def served(settings: Settings, *, timeout: float = 5.0) -> AsyncIterator[Omni]:
    """Omni on `settings`, in-process over ASGI, without background tasks; Kafka mode's topics and
    schema are dropped afterwards."""
    platform = build(settings)
    app = create_app(platform=platform, background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://omni.test", timeout=timeout) as client:
            yield Omni(client, platform, app)
    if settings.mode is Mode.KAFKA:
        await drop_kafka_state(settings)


async def drop_kafka_state(settings: Settings) -> None:
    """Each Kafka-mode test leaves no topics nor schema behind."""
    import psycopg
    from aiokafka.admin import AIOKafkaAdminClient

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE')
        like = f"{settings.database_schema}_replay_%"  # shadows of replays that were stopped (streams.replay)
        for (shadow,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (like,)).fetchall():
            conn.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        topics = Topics(prefix=settings.topic_prefix).all()
        existing = set(await admin.list_topics())  # once: each call reads every topic's metadata
        await admin.delete_topics([t for t in topics if t in existing])
    finally:
        await admin.close()
