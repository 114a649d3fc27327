"""GDPR requests a stopped process left unfinished are run to their end after a restart, in both
modes, by the process that leads the GDPR jobs, once each, and never while another job holds one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from commands.control_plane import CommandContext
from omni import failpoints
from omni.bootstrap import Platform, build
from omni.settings import Mode, Settings
from schemas.gdpr import RequestKind, RequestStatus
from stores.database import PostgresDatabase
from tests.e2e.conftest import ADMIN, drop_kafka_state, embedded_settings, kafka_settings, services_or_skip
from tests.e2e.test_crash_points import ArmedServer, created_tenant
from tests.e2e.test_gdpr import control_events


@pytest.fixture(params=["embedded", "kafka"])
async def settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Settings]:
    if request.param == "embedded":
        yield embedded_settings(tmp_path / "data")
        return
    services_or_skip()
    chosen = kafka_settings(uuid.uuid4().hex[:12])
    yield chosen
    await drop_kafka_state(chosen)


@contextlib.asynccontextmanager
async def running(settings: Settings, *, background: bool) -> AsyncIterator[tuple[Platform, httpx.AsyncClient]]:
    """Omni in-process; with `background`, as `omni serve` runs it (in Kafka mode the views are folded
    beside it, where `omni worker` would fold them)."""
    platform = build(settings)
    app = create_app(platform=platform, background=background)
    stop = asyncio.Event()
    async with app.router.lifespan_context(app):
        folding = None
        if background and settings.mode is Mode.KAFKA:
            folding = asyncio.create_task(platform.runner.run(stop, idle=0.005))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://omni.test") as client:
            yield platform, client
        stop.set()
        if folding is not None:
            await folding


async def ended(client: httpx.AsyncClient, key: str, request_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        shown = await client.get(f"/v1/gdpr/requests/{request_id}", headers={"Authorization": f"Bearer {key}"})
        assert shown.status_code == 200, shown.text
        body: dict[str, Any] = shown.json()
        if body["status"] in ("completed", "failed"):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_requests_left_unfinished_by_a_stopped_process_are_run_after_a_restart(settings: Settings) -> None:
    # A process records three requests and stops before their jobs ran: an access request never
    # started, an erasure stopped while running, and a rectification that had completed.
    async with running(settings, background=False) as (platform, client):
        created = await client.post(
            "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert created.status_code == 201, created.text
        tenant_id, key = created.json()["id"], created.json()["api_key"]
        ctx = CommandContext(tenant_id=tenant_id, key_id=key.split("_")[1])
        control = platform.control
        access = await platform.run_command(control.receive_gdpr_request, ctx, tenant_id, "person-a", RequestKind.ACCESS)
        erasure = await platform.run_command(control.receive_gdpr_request, ctx, tenant_id, "person-b", RequestKind.ERASURE)
        await platform.run_command(control.advance_gdpr_request, ctx, erasure, RequestStatus.RUNNING, "erasure started")
        done = await platform.run_command(control.receive_gdpr_request, ctx, tenant_id, "person-c", RequestKind.RECTIFICATION)
        await platform.run_command(control.advance_gdpr_request, ctx, done, RequestStatus.COMPLETED, "recorded")
        await platform.settle()

    # Restarted as `omni serve` runs: the leader of the GDPR jobs runs the two unfinished ones at once.
    async with running(settings, background=True) as (platform, client):
        resumed_access = await ended(client, key, str(access.id))
        assert [s["status"] for s in resumed_access["steps"]] == ["received", "running", "completed"], resumed_access
        assert "resumed" in resumed_access["steps"][1]["step"]
        export = await client.get(resumed_access["export"], headers={"Authorization": f"Bearer {key}"})
        assert export.status_code == 200 and export.json()["subject"] == "person-a", export.text
        resumed_erasure = await ended(client, key, str(erasure.id))
        assert [s["status"] for s in resumed_erasure["steps"]] == ["received", "running", "running", "completed"]
        assert "nothing to erase" in resumed_erasure["steps"][-1]["step"], resumed_erasure
        # Resumed, an erasure says the key is gone even when it found none: the stopped process may
        # have deleted it without saying so, and every process forgets the key it keeps in memory.
        erased = await control_events(platform, b"omni.gdpr.subject_erased")
        assert [(e["id"], e["subject"], e["key_id"]) for e in erased] == [(str(erasure.id), "person-b", None)]
        untouched = await ended(client, key, str(done.id))
        assert [s["status"] for s in untouched["steps"]] == ["received", "completed"], untouched
        assert await platform.gdpr_jobs.resume_once() == 0  # ended ones are not run again
        # Each resumed step is audited, in the tenant's chain, with the platform's job runner as actor.
        deadline = time.monotonic() + 30
        while not (audited := await audit(client, key, "gdpr.access.completed")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert [(e["resource"], e["actor"]["key_id"]) for e in audited] == [(f"gdpr/requests/{access.id}", "gdpr-jobs")]

        # A request whose job another process holds (its claim) is left to that job.
        late = await platform.run_command(platform.control.receive_gdpr_request, ctx, tenant_id, "person-d", RequestKind.ERASURE)
        await folded(client, key, str(late.id))
        other = PostgresDatabase(settings.database_url, schema=settings.database_schema) if settings.mode is Mode.KAFKA else None
        claims = other.claims() if other is not None else platform.gdpr_jobs.claims
        try:
            assert claims.claim(f"gdpr-request:{late.id}")
            assert await platform.gdpr_jobs.resume_once() == 0
            claims.release(f"gdpr-request:{late.id}")  # that job's process stopped before it ran it
            assert await platform.gdpr_jobs.resume_once() == 1
        finally:
            claims.close()
            if other is not None:
                other.close()
        assert (await ended(client, key, str(late.id)))["status"] == "completed"


async def audit(client: httpx.AsyncClient, key: str, action: str) -> list[dict[str, Any]]:
    listed = await client.get("/v1/audit", params={"action": action}, headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200, listed.text
    return listed.json()["data"]  # type: ignore[no-any-return]


async def folded(client: httpx.AsyncClient, key: str, request_id: str, timeout: float = 30) -> None:
    """The request is in the views (the worker beside the API folded it)."""
    deadline = time.monotonic() + timeout
    while (await client.get(f"/v1/gdpr/requests/{request_id}", headers={"Authorization": f"Bearer {key}"})).status_code != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def test_omni_serve_killed_while_a_request_runs_finishes_it_after_its_restart(tmp_path: Path) -> None:
    """`omni serve` (embedded) SIGKILLed right after recording an access request's `running`: the
    restarted process runs it to its end, and the export is there."""
    server = ArmedServer(tmp_path / "data", f"{failpoints.GDPR_AFTER_RUNNING}=kill")
    server.start()
    try:
        key = {"Authorization": f"Bearer {created_tenant(server)['api_key']}"}
        with contextlib.suppress(httpx.TransportError):  # answered 202, unless the kill came first
            httpx.post(server.url + "/v1/gdpr/requests", json={"subject": "person-a", "kind": "access"}, headers=key)
        assert server.process is not None and server.process.wait(timeout=30) == -signal.SIGKILL
        server.kills += 1
        server.start()
        deadline = time.monotonic() + 30
        while True:  # the request, as the audit trail (folded from the log) names it, run to its end
            entries = httpx.get(server.url + "/v1/audit", params={"action": "gdpr.access.received"}, headers=key).json()
            shown = [httpx.get(server.url + "/v1/" + e["resource"], headers=key).json() for e in entries["data"]]
            if shown and shown[0]["status"] == "completed":
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.05)
        steps = shown[0]["steps"]
        assert [(s["status"], s["step"]) for s in steps[:2]] == [("received", "received"), ("running", "access started")]
        assert [s["status"] for s in steps[2:]] == ["running", "completed"] and "resumed" in steps[2]["step"], steps
        assert httpx.get(server.url + shown[0]["export"], headers=key).json()["subject"] == "person-a"
    finally:
        server.stop()
