"""The broker stopped for 12 s (longer than the worker's 10 s group session) during ingest (a broker of this test's own): the API answers
503 while it is down and 202 again after; a client that retries what got 503 ends with
every event counted exactly once, by the Faust worker that ran through the outage (and said
it was not ready meanwhile)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import orjson
import pytest

from api.app import create_app
from omni.bootstrap import build
from schemas.topics import Topics
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, BATCH, kafka_settings
from tests.integration.conftest import OwnBroker, drop_schema, free_port
from tests.integration.worker import WorkerProcess, wait_ready, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]

OUTAGE_SECONDS = 12  # past the worker's group session timeout (streams.faust_app.SESSION_TIMEOUT)
BEFORE_OUTAGE = 5  # batches accepted before the broker stops
AFTER_OUTAGE = 5  # batches accepted after it is back


async def test_broker_outage_gives_503_then_202_and_exact_counts(tmp_path: Path, database_url: str, redis_url: str) -> None:
    broker = OwnBroker(tmp_path / "run")
    broker.run("start")
    settings = kafka_settings(os.urandom(6).hex(), produce_timeout_seconds=2, kafka_bootstrap_servers=broker.servers)
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
            worker = WorkerProcess({**env, "OMNI_WORKER_METRICS_PORT": str(free_port())}, tmp_path / "logs")
            worker.start()
            # The outage must come after the worker joined its group (not at a fixed time after its start).
            await wait_ready([worker], 60, "the worker to join its group before the outage")

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

            broker_back = asyncio.Event()

            async def client_loop() -> None:
                nonlocal sent
                accepted_after = 0
                while accepted_after < AFTER_OUTAGE:
                    await send_until_accepted(sent)
                    sent += 1
                    accepted_after += broker_back.is_set()

            loop = asyncio.create_task(client_loop())
            while sent < BEFORE_OUTAGE and not loop.done():
                await asyncio.sleep(0.05)
            await asyncio.to_thread(broker.run, "stop")
            outage_ends = time.monotonic() + OUTAGE_SECONDS
            # The worker rides the outage out, and says it is not ready meanwhile.
            while (status := (await asyncio.to_thread(worker.readiness))[0]) == 200 and time.monotonic() < outage_ends:
                await asyncio.sleep(0.2)
            assert status == 503, f"the worker should report the outage on /readyz:\n{worker.report()}"
            await asyncio.sleep(max(0.0, outage_ends - time.monotonic()))
            assert statuses.count(503) > 0, "the outage should have been visible to the client"
            assert worker.exited is None, f"the worker died during the outage:\n{worker.report()}"
            await asyncio.to_thread(broker.run, "start")
            broker_back.set()
            await asyncio.wait_for(loop, 90)
            assert statuses[-1] == 202
            await wait_ready([worker], 60, "the worker to be ready again after the outage")

            async def counted() -> tuple[int, object]:
                query = await client.get("/v1/meters/calls/query", headers={"Authorization": key["Authorization"]})
                body = query.json()
                return query.status_code, [row["value"] for row in body["data"]] if query.status_code == 200 else body

            expected = (200, [sent * 50])
            deadline = time.monotonic() + 90
            while (seen := await counted()) != expected and time.monotonic() < deadline:
                assert worker.exited is None, f"the worker died:\n{worker.report()}"
                await asyncio.sleep(0.2)
            assert seen == expected, f"the meter: expected {expected}, the API answered {seen}\n{worker.report()}"
            await asyncio.sleep(1.0)  # and nothing is counted twice later
            assert await counted() == expected
            assert worker.stop() == 0
    finally:
        try:
            if worker is not None:
                worker.ensure_dead()
            drop_schema(database_url, settings.database_schema)  # the topics go with the broker's own data
        finally:
            broker.run("stop")
