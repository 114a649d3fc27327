"""A GDPR request taken while Kafka is away (a broker of the test's own, not started yet): the
request is accepted (the event store takes it), its job cannot read the log, and the request stays
unfinished, to be run to its end by the resumer once Kafka is back. A walkthrough stopped the broker
under `omni serve`: both access requests it took meanwhile were recorded `failed` ("LogUnavailable")
for good, and a person's request, with its legal deadline, waited for the tenant to notice and ask
again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from omni.bootstrap import build
from streams.log import LogUnavailable
from tests.e2e.conftest import ADMIN, drop_kafka_state, kafka_settings
from tests.integration.conftest import OwnBroker

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]


async def test_a_request_whose_job_finds_kafka_away_is_resumed_not_failed(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    broker = OwnBroker(tmp_path / "run")  # not started: nothing listens on its port yet
    settings = kafka_settings(os.urandom(6).hex(), produce_timeout_seconds=2, kafka_bootstrap_servers=broker.servers)
    platform = build(settings)
    app = create_app(platform=platform, background=False)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://omni.test", timeout=30) as client,
        ):
            admin = {"Authorization": f"Bearer {ADMIN}"}
            tenant = (await client.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=admin)).json()
            key = {"Authorization": f"Bearer {tenant['api_key']}"}
            taken = await client.post("/v1/gdpr/requests", json={"subject": "user-1", "kind": "access"}, headers=key)
            assert taken.status_code == 202, taken.text
            await platform.gdpr_jobs.wait()  # its job ran, and met the log away

            stopped = platform.control.get_gdpr_request(tenant["id"], taken.json()["id"])
            assert stopped.status != "failed", vars(stopped)

            await asyncio.to_thread(broker.run, "start")
            for _ in range(30):  # a broker just started may not answer within the 2 s timeout on a busy machine
                try:
                    await platform.settle()  # the request reaches the views, where the resumer looks
                    break
                except LogUnavailable:
                    await asyncio.sleep(1)
            assert await platform.gdpr_jobs.resume_once() == 1
            await platform.settle()
            shown = await client.get(f"/v1/gdpr/requests/{taken.json()['id']}", headers=key)
            assert shown.json()["status"] == "completed", shown.text
            assert "resumed" in shown.json()["steps"][2]["step"], shown.text
        await drop_kafka_state(settings)
    finally:
        broker.run("stop")
