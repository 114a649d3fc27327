"""Webhooks in Kafka mode, on the shared services with topics and a schema of this test's own: two
delivery loops (as two processes would run them) under PostgreSQL's leadership, notices stored in
PostgreSQL's event store and folded from Kafka; each notice reaches the endpoint signed, in order,
and (one loop leading) once when it is answered 2xx."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from streams.webhooks import WebhookDeliveries
from tests.e2e.conftest import ADMIN, kafka_settings, served, services_or_skip
from tests.webhook_receiver import Receiver, verified


async def test_two_loops_deliver_each_notice_once_in_order() -> None:
    services_or_skip()
    settings = kafka_settings(
        f"wh{uuid.uuid4().hex[:10]}",
        webhooks_allow_private=True,
        webhooks_retry_schedule="0.2,0.2,0.2",
        read_your_writes_seconds=5,
    )
    hook = await Receiver(statuses=[500]).start()  # the first attempt fails: retried
    stop = asyncio.Event()
    try:
        async with served(settings, timeout=30) as omni:
            platform = omni.platform
            assert platform.webhooks is not None and platform.personal.master is not None
            other = WebhookDeliveries(settings, platform.control, platform.db, platform.personal.master)
            loops = [asyncio.create_task(w.run(stop)) for w in (platform.webhooks, other)]
            admin = omni.auth(ADMIN)
            created = await omni.client.post("/v1/webhook-endpoints", json={"url": hook.url}, headers=admin)
            assert created.status_code == 201, created.text
            endpoint = created.json()
            detected = (datetime.now(UTC) - timedelta(hours=80)).isoformat()
            for i in range(3):
                breach = await omni.client.post(
                    "/v1/gdpr/breaches", json={"detected_at": detected, "scope": f"b{i}"}, headers=admin
                )
                assert breach.status_code == 201, breach.text
            deadline = time.monotonic() + 60
            while len(hook.delivered()) < 3:
                assert time.monotonic() < deadline, [(r.id, r.status) for r in hook.received]
                await omni.settle()  # relay, fold and record the notices (the delivery loops run on their own)
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # and nothing is sent again
            stop.set()
            await asyncio.gather(*loops)
            listing = (await omni.client.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=admin)).json()
            notices = (await omni.client.get("/v1/notifications", headers=admin)).json()["data"]
    finally:
        stop.set()
        await hook.stop()
    # At least once: a loop that loses the lead mid-attempt (its lock's check failed on a loaded
    # machine) leaves that attempt unrecorded, and the new leader sends it again under the same
    # webhook-id, which receivers de-duplicate on (README, Webhooks). Once each otherwise, in order.
    statuses = [r.status for r in hook.received]
    assert statuses[0] == 500 and set(statuses[1:]) == {200}, statuses
    firsts = list(dict.fromkeys(hook.delivered()))
    assert firsts == [d["id"] for d in reversed(listing["data"])]
    assert sorted(firsts) == sorted(n["id"] for n in notices)
    for received in hook.received:
        assert verified(endpoint["secret"], received)["type"] == "omni.gdpr.breach_overdue"
