"""A resource is readable by its creator the moment its 201 arrives, in both modes, with the
relay and the runner running as they do in production (nothing settled by the test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from omni.bootstrap import build
from omni.settings import Settings
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, drop_kafka_state, embedded_settings, kafka_settings, services_or_skip

ROUNDS = 30


@pytest.fixture(params=["embedded", "kafka"])
async def live(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API with its relay; the views folded by the in-process runner (embedded: inside the API,
    as `omni serve` runs it; Kafka: beside it, where `omni worker` would run)."""
    settings: Settings
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "data", read_your_writes_seconds=5)
    else:
        services_or_skip()
        settings = kafka_settings(uuid.uuid4().hex[:12], read_your_writes_seconds=5)
    platform = build(settings)
    app = create_app(platform=platform, background=True)
    stop = asyncio.Event()
    async with app.router.lifespan_context(app):
        folding = None
        if request.param == "kafka":
            folding = asyncio.create_task(platform.runner.run(stop, idle=0.005))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://omni.test") as client:
            yield client
        stop.set()
        if folding is not None:
            await folding
    if request.param == "kafka":
        await drop_kafka_state(settings)


async def test_every_create_is_readable_at_once(live: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for i in range(ROUNDS):
        created = await live.post("/v1/tenants", json={"name": f"t{i}", "plan": "p"}, headers=admin)
        assert created.status_code == 201, created.text
        tenant = created.json()
        own = {"Authorization": f"Bearer {tenant['api_key']}"}
        shown = await live.get(f"/v1/tenants/{tenant['id']}", headers=own)
        assert shown.status_code == 200, f"round {i}: {shown.text}"
        issued = await live.post(f"/v1/tenants/{tenant['id']}/keys", json={"label": "second"}, headers=own)
        assert issued.status_code == 201
        keys = (await live.get(f"/v1/tenants/{tenant['id']}/keys", headers=own)).json()["data"]
        assert issued.json()["key_id"] in {k["key_id"] for k in keys}, f"round {i}"
        assert (await live.delete(f"/v1/keys/{issued.json()['key_id']}", headers=own)).status_code == 204
        keys = (await live.get(f"/v1/tenants/{tenant['id']}/keys", headers=own)).json()["data"]
        assert [k["revoked_at"] is not None for k in keys if k["label"] == "second"] == [True], f"round {i}"
        if i % 10 == 0:
            slug = f"calls-{i}"
            defined = await live.post(
                "/v1/meters", json={"slug": slug, "event_type": "call", "aggregation": "COUNT"}, headers=admin
            )
            assert defined.status_code == 201, defined.text
            assert (await live.get(f"/v1/meters/{slug}", headers=own)).status_code == 200, f"round {i}"
            query = await live.get(f"/v1/meters/{slug}/query", headers=own)
            assert query.status_code == 200 and query.json()["data"] == [], f"round {i}: {query.text}"


async def test_usage_sent_before_a_meter_is_defined_is_in_its_first_query(live: httpx.AsyncClient) -> None:
    # Read-your-writes covers the definition; the history it counts is caught up by the runner.
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant = (await live.post("/v1/tenants", json={"name": "t", "plan": "p"}, headers=admin)).json()
    own = {"Authorization": f"Bearer {tenant['api_key']}"}
    events = [cloud_event(f"e{i}", type_="call") for i in range(5)]
    sent = await live.post("/v1/events", json=events, headers={**own, "Content-Type": "application/cloudevents-batch+json"})
    assert sent.status_code == 202
    defined = await live.post("/v1/meters", json={"slug": "calls", "event_type": "call", "aggregation": "COUNT"}, headers=admin)
    assert defined.status_code == 201
    assert (await live.get("/v1/meters/calls/query", headers=own)).status_code == 200


async def test_a_data_class_and_a_gdpr_request_are_readable_at_once(live: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant = (await live.post("/v1/tenants", json={"name": "t", "plan": "p"}, headers=admin)).json()
    own = {"Authorization": f"Bearer {tenant['api_key']}"}
    for n in range(3):
        put = await live.put(f"/v1/data-classes/chat-{n}", json={"personal": ["$.data.email"]}, headers=admin)
        assert put.status_code == 201, put.text
        assert (await live.get(f"/v1/data-classes/chat-{n}", headers=own)).status_code == 200
        created = await live.post("/v1/gdpr/requests", json={"subject": f"person-{n}", "kind": "access"}, headers=own)
        assert created.status_code == 202, created.text
        shown = await live.get(created.headers["location"], headers=own)
        assert shown.status_code == 200 and shown.json()["subject"] == f"person-{n}", shown.text
        deadline = asyncio.get_running_loop().time() + 10
        while shown.json()["status"] != "completed":  # the job's own steps are read-your-writes too
            assert asyncio.get_running_loop().time() < deadline, shown.text
            await asyncio.sleep(0.01)
            shown = await live.get(created.headers["location"], headers=own)


async def test_plans_quotas_and_slos_are_readable_at_once(live: httpx.AsyncClient) -> None:
    # Resources added after issue 12 (plans, quotas, SLOs) go through the same commands: each write is read back at once.
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant = (await live.post("/v1/tenants", json={"name": "t", "plan": "p"}, headers=admin)).json()
    own = {"Authorization": f"Bearer {tenant['api_key']}"}
    meter = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
    assert (await live.post("/v1/meters", json=meter, headers=admin)).status_code == 201
    slo = {"event_type": "inference", "sli": "availability", "status_property": "$.data.status", "objective": 99, "window": "7d"}
    for n in range(5):
        limit = 1000 + n
        plan = {"name": f"Plan {n}", "entitlements": [{"meter": "tokens", "limit": limit, "period": "MONTH"}]}
        put = await live.put(f"/v1/plans/plan-{n}", json=plan, headers=admin)
        assert put.status_code == 201, put.text
        shown = await live.get(f"/v1/plans/plan-{n}", headers=own)
        assert shown.status_code == 200 and shown.json()["version"] == 1, f"round {n}: {shown.text}"
        revised = await live.put(f"/v1/plans/plan-{n}", json={**plan, "name": f"Plan {n}b"}, headers=admin)
        assert revised.status_code == 200 and revised.json()["version"] == 2, revised.text
        assert (await live.get(f"/v1/plans/plan-{n}", headers=own)).json()["version"] == 2, f"round {n}"

        assigned = await live.put(f"/v1/tenants/{tenant['id']}/plan", json={"plan": f"plan-{n}"}, headers=admin)
        assert assigned.status_code == 204, assigned.text
        quota = await live.get("/v1/quotas/tokens", headers=own)
        assert quota.status_code == 200, f"round {n}: {quota.text}"
        assert (quota.json()["limit"], quota.json()["source"]) == (limit, "plan"), f"round {n}: {quota.text}"

        override = {"limit": 10 + n, "period": "DAY"}
        assert (await live.put(f"/v1/tenants/{tenant['id']}/quotas/tokens", json=override, headers=admin)).status_code == 204
        quota = await live.get("/v1/quotas/tokens", headers=own)
        assert (quota.json()["limit"], quota.json()["source"]) == (10 + n, "override"), f"round {n}: {quota.text}"
        assert (await live.delete(f"/v1/tenants/{tenant['id']}/quotas/tokens", headers=admin)).status_code == 204
        quota = await live.get("/v1/quotas/tokens", headers=own)
        assert (quota.json()["limit"], quota.json()["source"]) == (limit, "plan"), f"round {n}: {quota.text}"

        defined = await live.put(f"/v1/slos/slo-{n}", json=slo, headers=own)
        assert defined.status_code == 201, defined.text
        read = await live.get(f"/v1/slos/slo-{n}", headers=own)
        assert read.status_code == 200, f"round {n}: {read.text}"
        revised = await live.put(f"/v1/slos/slo-{n}", json={**slo, "objective": 99.5}, headers=own)
        assert revised.status_code == 200 and revised.json()["version"] == 2, revised.text
        listed = (await live.get("/v1/slos", headers=own)).json()["data"]
        assert {(s["name"], s["version"]) for s in listed} >= {(f"slo-{n}", 2)}, f"round {n}: {listed}"
