"""The broker stopped for 20 s during ingest (a broker of this test's own): the API answers
503 while it is down and 202 again after; a client that retries what got 503 ends with
every event counted exactly once, by the Faust worker that ran through the outage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

from api.app import create_app
from omni.bootstrap import build
from schemas.topics import Topics
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, drop_kafka_state, kafka_settings
from tests.integration.conftest import free_port
from tests.integration.worker import WorkerProcess, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 20


class OwnBroker:
    """A second single-node Kafka, so stopping it disturbs no other test."""

    def __init__(self, run_dir: Path) -> None:
        self.port, self.controller = free_port(), free_port()
        self.env = {
            **os.environ,
            "OMNI_RUN_DIR": str(run_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller),
        }

    def run(self, action: str) -> None:
        subprocess.run(["bash", "ops/services/kafka.sh", action], cwd=ROOT, env=self.env, check=True, timeout=120)


async def test_broker_outage_gives_503_then_202_and_exact_counts(tmp_path: Path, database_url: str, redis_url: str) -> None:
    broker = OwnBroker(tmp_path / "run")
    broker.run("start")
    settings = kafka_settings(os.urandom(6).hex(), produce_timeout_seconds=2, kafka_bootstrap_servers=f"localhost:{broker.port}")
    platform = build(settings)
    app = create_app(platform=platform, background=False)
    worker: WorkerProcess | None = None
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://omni.test", timeout=30) as client,
        ):
            admin = {"Authorization": f"Bearer {ADMIN}"}
            tenant = (await client.post("/v1/tenants", json={"name": "outage", "plan": "p"}, headers=admin)).json()
            meter = {"slug": "calls", "event_type": "call", "aggregation": "COUNT"}
            assert (await client.post("/v1/meters", json=meter, headers=admin)).status_code == 201
            while await platform.relay.relay_once():  # the meter definition onto the control topic
                pass
            key = {"Authorization": f"Bearer {tenant['api_key']}", "Content-Type": BATCH}
            topics = Topics(prefix=settings.topic_prefix, usage_partitions=settings.usage_partitions)
            env = worker_env(topics, settings.kafka_bootstrap_servers, database_url, settings.database_schema, tmp_path)
            (tmp_path / "logs").mkdir()
            worker = WorkerProcess(env, tmp_path / "logs")
            worker.start()

            statuses: list[int] = []
            sent = 0

            async def send_until_accepted(batch: int) -> None:
                body = orjson.dumps([cloud_event(f"b{batch}-{i}", type_="call") for i in range(50)])
                while True:
                    response = await client.post("/v1/events", content=body, headers=key)
                    statuses.append(response.status_code)
                    if response.status_code == 202:
                        return
                    assert response.status_code == 503, response.text
                    assert response.headers["content-type"] == "application/problem+json"
                    await asyncio.sleep(0.5)

            async def client_loop(stop_at: float) -> None:
                nonlocal sent
                while time.monotonic() < stop_at:
                    await send_until_accepted(sent)
                    sent += 1

            loop = asyncio.create_task(client_loop(time.monotonic() + OUTAGE_SECONDS + 25))
            await asyncio.sleep(3)
            await asyncio.to_thread(broker.run, "stop")
            await asyncio.sleep(OUTAGE_SECONDS)
            assert statuses.count(503) > 0, "the outage should have been visible to the client"
            await asyncio.to_thread(broker.run, "start")
            await loop
            assert statuses[-1] == 202

            async def counted() -> list[int]:
                query = await client.get("/v1/meters/calls/query", headers={"Authorization": key["Authorization"]})
                return [row["value"] for row in query.json()["data"]]

            deadline = time.monotonic() + 90
            while await counted() != [sent * 50] and time.monotonic() < deadline:
                assert worker.process is not None and worker.process.poll() is None, f"the worker died:\n{worker.tail()}"
                await asyncio.sleep(0.2)
            assert await counted() == [sent * 50], f"the worker's views; its log:\n{worker.tail()}"
            await asyncio.sleep(1.0)  # and nothing is counted twice later
            assert await counted() == [sent * 50]
            assert worker.stop() == 0
    finally:
        try:
            if worker is not None:
                worker.ensure_dead()
            await drop_kafka_state(settings)
        finally:
            broker.run("stop")
