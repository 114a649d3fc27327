"""Webhooks across a crash: `omni serve` (embedded) is killed with SIGKILL while notices wait for an
endpoint that fails, and restarted; every notice is then delivered, at least once, in order."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADMIN
from tests.e2e.test_crash_restart_embedded import Server
from tests.webhook_receiver import Receiver, verified

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
NOTICES = 5


async def test_a_kill_mid_way_delivers_every_notice_at_least_once_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNI_WEBHOOKS_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("OMNI_WEBHOOKS_RETRY_SCHEDULE", ",".join(["0.2"] * 50))
    monkeypatch.setenv("OMNI_METER_API_CALLS", "false")
    server = Server(tmp_path / "data")
    # The first two notices are delivered; every attempt after them fails until the restart.
    hook = await Receiver(statuses=[200, 200] + [500] * 10_000).start()
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=ADMIN_HEADERS, timeout=30) as client:
            created = await client.post("/v1/webhook-endpoints", json={"url": hook.url})
            assert created.status_code == 201, created.text
            endpoint = created.json()
            detected = (datetime.now(UTC) - timedelta(hours=80)).isoformat()
            for i in range(NOTICES):
                breach = await client.post("/v1/gdpr/breaches", json={"detected_at": detected, "scope": f"bucket {i}"})
                assert breach.status_code == 201, breach.text
            await hook.wait_for(2)
            await hook.wait_for(4, delivered=False)  # the third was tried, and failed, at least twice
            before = len(hook.received)

        await asyncio.to_thread(server.kill)
        hook.statuses.clear()  # from now on every attempt succeeds
        await asyncio.to_thread(server.start)

        async with httpx.AsyncClient(base_url=server.url, headers=ADMIN_HEADERS, timeout=30) as client:
            notices = (await client.get("/v1/notifications")).json()["data"]
            assert len(notices) == NOTICES
            deadline = time.monotonic() + 60
            while len(set(hook.delivered())) < NOTICES:
                assert time.monotonic() < deadline, [(r.id, r.status) for r in hook.received]
                await asyncio.sleep(0.1)
            listing = (await client.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()["data"]

        assert len(hook.received) > before  # delivered after the restart
        assert {r.id for r in hook.received} == {n["id"] for n in notices}
        in_store_order = [d["id"] for d in reversed(listing)]
        assert [d["status"] for d in listing] == ["delivered"] * NOTICES
        assert list(dict.fromkeys(hook.delivered())) == in_store_order  # each at least once, in order
        for received in hook.received:
            verified(endpoint["secret"], received)
    finally:
        await asyncio.to_thread(server.stop)
        await hook.stop()
