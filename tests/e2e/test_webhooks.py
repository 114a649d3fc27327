"""Webhooks, embedded mode with everything in-process as `omni serve` runs it (the relays, the runner,
the delivery loop): real receivers (tests/webhook_receiver.py) verifying signatures as the Standard
Webhooks specification says, retries with a short schedule, a hanging receiver beside a fast one,
and the endpoints' API (SSRF refusals, tenants apart, the limit)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from omni.bootstrap import build
from omni.settings import Settings
from tests.e2e.conftest import ADMIN, Omni, embedded_settings
from tests.webhook_receiver import Receiver, verified

CALLS = {"slug": "calls", "event_type": "request", "aggregation": "COUNT"}
PLAN = {"entitlements": [{"meter": "calls", "limit": 4, "period": "DAY", "thresholds": [50, 100]}]}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[Omni]:
    """Omni in embedded mode with its background tasks running, as `omni serve` runs them."""
    values: dict[str, Any] = {
        "webhooks_allow_private": True,  # the receivers listen on 127.0.0.1
        "webhooks_retry_schedule": "0.2,0.2,0.2,0.2",
        "webhooks_timeout_seconds": 5,
        "read_your_writes_seconds": 5,
    }
    settings: Settings = embedded_settings(tmp_path / "data", **(values | overrides))
    platform = build(settings)
    app = create_app(platform=platform, background=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://omni.test", timeout=30) as client:
            yield Omni(client, platform, app)


@contextlib.asynccontextmanager
async def receivers(*made: Receiver) -> AsyncIterator[tuple[Receiver, ...]]:
    started = [await r.start() for r in made]
    try:
        yield tuple(started)
    finally:
        for r in started:
            await r.stop()


async def endpoint(omni: Omni, key: str, url: str, **extra: Any) -> dict[str, Any]:
    response = await omni.client.post("/v1/webhook-endpoints", json={"url": url, **extra}, headers=omni.auth(key))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def breach(omni: Omni, scope: str) -> None:
    """A breach detected 80 hours ago: past its 72, so the platform emits one overdue notice."""
    detected = (datetime.now(UTC) - timedelta(hours=80)).isoformat()
    response = await omni.client.post(
        "/v1/gdpr/breaches", json={"detected_at": detected, "scope": scope}, headers=omni.auth(ADMIN)
    )
    assert response.status_code == 201, response.text


async def deliveries(omni: Omni, key: str, endpoint_id: str, **params: Any) -> dict[str, Any]:
    response = await omni.client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", params=params, headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def settled_deliveries(omni: Omni, key: str, endpoint_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The endpoint's deliveries, once `count` of them are no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        data = (await deliveries(omni, key, endpoint_id, limit=100))["data"]
        if len([d for d in data if d["status"] != "pending"]) >= count:
            return data  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, data
        await receivers_pause()


async def receivers_pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)


async def test_each_notice_is_posted_signed_to_its_owners_endpoints_only(tmp_path: Path) -> None:
    async with running(tmp_path) as omni, receivers(Receiver(), Receiver(), Receiver()) as (to_a, to_b, to_platform):
        admin = omni.auth(ADMIN)
        await omni.meter(**CALLS)
        assert (await omni.client.put("/v1/plans/pro", json=PLAN, headers=admin)).status_code == 201
        a_id, a_key = await omni.tenant("a")
        _, b_key = await omni.tenant("b")
        assert (await omni.client.put(f"/v1/tenants/{a_id}/plan", json={"plan": "pro"}, headers=admin)).status_code == 204
        a = await endpoint(omni, a_key, to_a.url, description="alerts")
        b = await endpoint(omni, b_key, to_b.url)
        platform = await endpoint(omni, ADMIN, to_platform.url)
        assert a["secret"].startswith("whsec_") and len(a["secret"]) >= len("whsec_") + 32  # 24+ bytes in base64
        assert len({a["secret"], b["secret"], platform["secret"]}) == 3
        listed = (await omni.client.get("/v1/webhook-endpoints", headers=omni.auth(a_key))).json()["data"]
        assert listed == [{k: a[k] for k in ("id", "url", "description", "created_at")}]  # no secret

        for i in range(2):  # 2 of 4: the 50% threshold
            consumed = await omni.client.post(
                "/v1/quotas/calls/consume", json={"amount": 1, "idempotency_key": f"k{i}"}, headers=omni.auth(a_key)
            )
            assert consumed.status_code == 200, consumed.text
        await to_a.wait_for(1)
        payload = verified(a["secret"], to_a.received[0])
        notices = (await omni.client.get("/v1/notifications", headers=omni.auth(a_key))).json()["data"]
        assert [n["threshold"] for n in notices] == [50]
        assert payload == {"type": "omni.quota.threshold_crossed", "timestamp": notices[0]["occurred_at"], "data": notices[0]}
        assert to_a.received[0].id == notices[0]["id"]

        await breach(omni, "a backup bucket")  # the platform's notice
        await to_platform.wait_for(1)
        payload = verified(platform["secret"], to_platform.received[0])
        overdue = (await omni.client.get("/v1/notifications", headers=admin)).json()["data"]
        assert payload["type"] == "omni.gdpr.breach_overdue" and payload["data"] == overdue[0]

        listing = await settled_deliveries(omni, a_key, a["id"], 1)
        assert [(d["id"], d["status"], d["next_attempt_at"]) for d in listing] == [(notices[0]["id"], "delivered", None)]
        assert [(t["status_code"], t["error"]) for t in listing[0]["attempts"]] == [(200, None)]
        assert to_b.received == [] and len(to_a.received) == 1 and len(to_platform.received) == 1


async def test_failed_attempts_are_retried_in_order_until_a_2xx(tmp_path: Path) -> None:
    """500, a redirect (not followed) and a 503, then 200: four attempts of the first notice, each
    signed anew with the same id and body; the notices after it wait for it, then follow in order."""
    async with running(tmp_path) as omni, receivers(Receiver(statuses=[500, 302, 503])) as (hook,):
        created = await endpoint(omni, ADMIN, hook.url)
        for i in range(3):
            await breach(omni, f"bucket {i}")
        await hook.wait_for(3)
        first = hook.received[0]
        assert [r.status for r in hook.received[:4]] == [500, 302, 503, 200]
        assert {r.id for r in hook.received[:4]} == {first.id} and {r.body for r in hook.received[:4]} == {first.body}
        for received in hook.received:
            verified(created["secret"], received)
        listing = await settled_deliveries(omni, ADMIN, created["id"], 3)
        assert [d["id"] for d in reversed(listing)] == hook.delivered()  # delivered in the notices' order, once each
        assert len(hook.received) == 6
        oldest = listing[-1]
        assert oldest["status"] == "delivered"
        assert [(t["status_code"], t["error"]) for t in oldest["attempts"]] == [
            (500, "HTTP 500"),
            (302, "HTTP 302: redirects are not followed"),
            (503, "HTTP 503"),
            (200, None),
        ]


async def test_a_delivery_is_given_up_after_the_schedule_and_the_next_one_goes(tmp_path: Path) -> None:
    async with running(tmp_path, webhooks_retry_schedule="0.1,0.1") as omni, receivers(Receiver(statuses=[500] * 3)) as (hook,):
        created = await endpoint(omni, ADMIN, hook.url)
        await breach(omni, "first")
        await hook.wait_for(3, delivered=False)
        await breach(omni, "second")
        await hook.wait_for(1)
        listing = await settled_deliveries(omni, ADMIN, created["id"], 2)
        assert [d["status"] for d in listing] == ["delivered", "failed"]
        assert [t["status_code"] for t in listing[1]["attempts"]] == [500, 500, 500]
        assert listing[1]["next_attempt_at"] is None
        assert hook.delivered() == [listing[0]["id"]]


async def test_a_hanging_endpoint_delays_no_other(tmp_path: Path) -> None:
    """One receiver never answers (and the attempts' limit is long); another endpoint of the same owner
    gets the same notices meanwhile, each while the hanging one still holds its first."""
    async with (
        running(tmp_path, webhooks_timeout_seconds=120) as omni,
        receivers(Receiver(hang=True), Receiver()) as (stuck, fine),
    ):
        stuck_id = (await endpoint(omni, ADMIN, stuck.url))["id"]
        await endpoint(omni, ADMIN, fine.url)
        for i in range(3):
            await breach(omni, f"bucket {i}")
            await fine.wait_for(i + 1)
        assert len(stuck.received) == 1 and stuck.received[0].status == 0  # its first, still unanswered
        # Only the first pending delivery has a time of its own; the two behind it wait for it.
        listing = (await deliveries(omni, ADMIN, stuck_id))["data"]
        assert [d["status"] for d in listing] == ["pending"] * 3
        assert [d["next_attempt_at"] is None for d in listing] == [True, True, False]


async def test_an_attempts_time_is_when_it_began(tmp_path: Path) -> None:
    """A receiver answering 1.5 s late: the attempt's `at` is when it was made (the signature's
    timestamp's second), not when its answer came (it was, as a timeout's was the timeout later)."""
    async with (
        running(tmp_path, webhooks_retry_schedule="0.1") as omni,
        receivers(Receiver(statuses=[500], delay=1.5)) as (slow,),
    ):
        created = await endpoint(omni, ADMIN, slow.url)
        await breach(omni, "late answers")
        await slow.wait_for(1)  # delivered: the 500, then the 200
        listing = await settled_deliveries(omni, ADMIN, created["id"], 1)
        signed = [int(received.headers["webhook-timestamp"]) for received in slow.received]
        began = [datetime.fromisoformat(t["at"]).timestamp() for t in listing[0]["attempts"]]
        assert len(began) == 2 and all(-0.5 < at - second < 1 for at, second in zip(began, signed, strict=True)), (began, signed)


async def test_a_deleted_endpoint_gets_nothing_more_and_is_gone(tmp_path: Path) -> None:
    async with running(tmp_path) as omni, receivers(Receiver(), Receiver()) as (gone, kept):
        deleted = await endpoint(omni, ADMIN, gone.url)
        await endpoint(omni, ADMIN, kept.url)
        response = await omni.client.delete(f"/v1/webhook-endpoints/{deleted['id']}", headers=omni.auth(ADMIN))
        assert response.status_code == 204, response.text
        await breach(omni, "after")
        await kept.wait_for(1)
        assert gone.received == []
        for path in (f"/v1/webhook-endpoints/{deleted['id']}", f"/v1/webhook-endpoints/{deleted['id']}/deliveries"):
            assert (await omni.client.get(path, headers=omni.auth(ADMIN))).status_code == 404
        again = await omni.client.delete(f"/v1/webhook-endpoints/{deleted['id']}", headers=omni.auth(ADMIN))
        assert again.status_code == 404 and again.headers["content-type"] == "application/problem+json"
        assert [e["url"] for e in (await omni.client.get("/v1/webhook-endpoints", headers=omni.auth(ADMIN))).json()["data"]] == [
            kept.url
        ]


async def test_the_deliveries_list_pages_newest_first(tmp_path: Path) -> None:
    async with running(tmp_path) as omni, receivers(Receiver()) as (hook,):
        created = await endpoint(omni, ADMIN, hook.url)
        for i in range(3):
            await breach(omni, f"bucket {i}")
        await hook.wait_for(3)
        first = await deliveries(omni, ADMIN, created["id"], limit=2)
        rest = await deliveries(omni, ADMIN, created["id"], limit=2, before=first["next_before"])
        assert rest["next_before"] is None
        assert [d["id"] for d in first["data"] + rest["data"]] == list(reversed(hook.delivered()))
        for before in ("x", "0", "-1", "99999999999999999999"):
            bad = await omni.client.get(
                f"/v1/webhook-endpoints/{created['id']}/deliveries", params={"before": before}, headers=omni.auth(ADMIN)
            )
            assert bad.status_code == 422 and bad.json()["errors"][0]["location"] == "query.before", (before, bad.text)


# The endpoints' API, in both modes (no delivery loop needed) -------------------------------------

REFUSED = {
    "http": "http://93.184.215.14/hook",
    "credentials": "https://user:secret@93.184.215.14/hook",
    "loopback": "https://127.0.0.1/hook",
    "localhost": "https://localhost/hook",
    "private": "https://10.0.0.7/hook",
    "link-local": "https://169.254.169.254/latest/meta-data",
    "mapped": "https://[::ffff:192.168.1.1]/hook",
    "decimal-loopback": "https://2130706433/hook",  # resolved by the system to 127.0.0.1
    "unresolvable": "https://no-such-host.invalid/hook",
    "not-a-url": "hook",
}


@pytest.mark.parametrize("url", REFUSED.values(), ids=REFUSED.keys())
async def test_a_url_that_could_reach_inside_is_422_at_body_url(omni: Omni, url: str) -> None:
    _, key = await omni.tenant()
    response = await omni.client.post("/v1/webhook-endpoints", json={"url": url}, headers=omni.auth(key))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["location"] for e in response.json()["errors"]] == ["body.url"]
    assert (await omni.client.get("/v1/webhook-endpoints", headers=omni.auth(key))).json()["data"] == []
    await omni.settle()
    refused = await omni.client.get("/v1/audit", params={"outcome": "rejected"}, headers=omni.auth(key))
    assert [e["action"] for e in refused.json()["data"]] == ["webhook_endpoint.create"]


async def test_endpoints_are_their_owners_alone_and_limited(omni: Omni) -> None:
    """Another tenant's endpoint is 404 (read, deliveries, delete); the admin's are the platform's,
    apart from every tenant's; the 11th endpoint of an owner is 409."""
    _, a_key = await omni.tenant("a")
    _, b_key = await omni.tenant("b")
    a, b, admin = omni.auth(a_key), omni.auth(b_key), omni.auth(ADMIN)
    public = "https://93.184.215.14/hook"  # a public address: no resolution needed, nothing sent in this test
    made = await omni.client.post("/v1/webhook-endpoints", json={"url": public}, headers=a)
    assert made.status_code == 201, made.text
    a_endpoint = made.json()["id"]
    await omni.settle()
    for caller in (b, admin):
        for path in (f"/v1/webhook-endpoints/{a_endpoint}", f"/v1/webhook-endpoints/{a_endpoint}/deliveries"):
            response = await omni.client.get(path, headers=caller)
            assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
        assert (await omni.client.delete(f"/v1/webhook-endpoints/{a_endpoint}", headers=caller)).status_code == 404
        assert (await omni.client.get("/v1/webhook-endpoints", headers=caller)).json()["data"] == []
    mine = await omni.client.get(f"/v1/webhook-endpoints/{a_endpoint}", headers=a)
    assert mine.status_code == 200 and "secret" not in mine.json() and mine.json()["url"] == public
    assert (await omni.client.get(f"/v1/webhook-endpoints/{a_endpoint}/deliveries", headers=a)).json() == {
        "data": [],
        "next_before": None,
    }
    for path in ("/v1/webhook-endpoints/not-a-uuid", "/v1/webhook-endpoints/not-a-uuid/deliveries"):
        assert (await omni.client.get(path, headers=a)).status_code == 404

    for _ in range(9):
        assert (await omni.client.post("/v1/webhook-endpoints", json={"url": public}, headers=a)).status_code == 201
    over = await omni.client.post("/v1/webhook-endpoints", json={"url": public}, headers=a)
    assert over.status_code == 409, over.text
    assert over.json()["type"].endswith("/webhook-endpoint-limit-reached")
    assert (await omni.client.post("/v1/webhook-endpoints", json={"url": public}, headers=b)).status_code == 201  # B's own
    assert (await omni.client.delete(f"/v1/webhook-endpoints/{a_endpoint}", headers=a)).status_code == 204
    assert (await omni.client.post("/v1/webhook-endpoints", json={"url": public}, headers=a)).status_code == 201
    await omni.settle()
    assert len((await omni.client.get("/v1/webhook-endpoints", headers=a)).json()["data"]) == 10


async def test_the_leader_prunes_settled_deliveries_past_keeping(tmp_path: Path) -> None:
    import asyncio

    async with running(tmp_path) as omni, receivers(Receiver()) as (hook,):
        created = await endpoint(omni, ADMIN, hook.url)
        await breach(omni, "kept a while")
        await hook.wait_for(1)
        assert len(await settled_deliveries(omni, ADMIN, created["id"], 1)) == 1
        loop = omni.platform.webhooks
        assert loop is not None
        loop.keep = timedelta(0)  # as if OMNI_WEBHOOKS_KEEP_DAYS had passed
        loop._next_prune = 0.0  # noqa: SLF001 - its hour is up
        loop.wake()
        deadline = time.monotonic() + 10
        while (await deliveries(omni, ADMIN, created["id"]))["data"]:
            assert time.monotonic() < deadline, "the delivery loop never pruned"
            await asyncio.sleep(0.05)
        await breach(omni, "after pruning")  # delivery goes on as before
        await hook.wait_for(2)


class HandedOver:
    """The delivery loop's leadership, as the test hands it away and back (the other relays' as ever)."""

    def __init__(self) -> None:
        self.leading = True

    def hold(self) -> bool:
        return self.leading

    def release(self) -> None:
        pass


async def test_an_attempt_in_flight_at_a_handover_ends_and_is_not_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop losing its lead cancelled the attempts it had sent, unrecorded, and the next leader
    sent each again under the same webhook-id. Now each attempt is leased first: the loop lets it end
    and records it, and no leader takes it up meanwhile."""
    import asyncio

    from stores.database import SqliteDatabase

    handed = HandedOver()
    leadership = SqliteDatabase.leadership
    monkeypatch.setattr(SqliteDatabase, "leadership", lambda db, name: handed if name == "webhooks" else leadership(db, name))
    async with running(tmp_path) as omni, receivers(Receiver(delay=1.5)) as (slow,):
        created = await endpoint(omni, ADMIN, slow.url)
        await breach(omni, "handed over")
        await asyncio.wait_for(slow.arriving.wait(), 10)
        handed.leading = False  # another process leads now...
        await asyncio.sleep(0.6)
        handed.leading = True  # ...and this one again, while the first attempt is still unanswered
        await slow.wait_for(1)
        [delivery] = await settled_deliveries(omni, ADMIN, created["id"], 1)
        await asyncio.sleep(2.0)  # time enough for a leader to send it again, were it due
        assert len(slow.received) == 1, [r.id for r in slow.received]
        assert delivery["status"] == "delivered" and len(delivery["attempts"]) == 1


async def test_a_rotated_secret_signs_beside_the_new_one_until_it_lapses(tmp_path: Path) -> None:
    """POST .../rotate-secret: a new secret, shown once; each delivery's `webhook-signature` holds the
    new secret's signature and, until `previous_secret_valid_until`, the old one's after it (Standard
    Webhooks' space-separated signatures), so a receiver switches over without refusing a delivery.
    Rotating with `previous_secret_hours: 0` (a leaked secret) ends every earlier one at once."""
    async with running(tmp_path) as omni, receivers(Receiver()) as (hook,):
        admin = omni.auth(ADMIN)
        created = await endpoint(omni, ADMIN, hook.url)
        path = f"/v1/webhook-endpoints/{created['id']}/rotate-secret"
        before = datetime.now(UTC)
        rotated = await omni.client.post(path, headers=admin)  # no body: the old one kept a day
        assert rotated.status_code == 200, rotated.text
        answer = rotated.json()
        assert answer["id"] == created["id"] and answer["secret"].startswith("whsec_")
        assert answer["secret"] != created["secret"]
        until = datetime.fromisoformat(answer["previous_secret_valid_until"])
        assert before + timedelta(hours=24) <= until <= datetime.now(UTC) + timedelta(hours=24)

        await breach(omni, "first")
        await hook.wait_for(1)
        first = hook.received[0]
        assert len(first.headers["webhook-signature"].split(" ")) == 2
        assert verified(answer["secret"], first) == verified(created["secret"], first)
        new_only = {**first.headers, "webhook-signature": first.headers["webhook-signature"].split(" ")[0]}
        verified(answer["secret"], type(first)(new_only, first.body, first.status))  # the new secret's comes first

        leaked = await omni.client.post(path, json={"previous_secret_hours": 0}, headers=admin)
        assert leaked.status_code == 200, leaked.text
        assert leaked.json()["previous_secret_valid_until"] <= datetime.now(UTC).isoformat().replace("+00:00", "Z")
        await breach(omni, "second")
        await hook.wait_for(2)
        second = hook.received[1]
        assert len(second.headers["webhook-signature"].split(" ")) == 1
        verified(leaked.json()["secret"], second)
        for ended in (created["secret"], answer["secret"]):
            with pytest.raises(AssertionError, match="no valid signature"):
                verified(ended, second)

        # Sent again with its Idempotency-Key, a rotation is not done twice: the same secret.
        keyed = {**admin, "Idempotency-Key": "rotate-once"}
        once = await omni.client.post(path, json={"previous_secret_hours": 1}, headers=keyed)
        twice = await omni.client.post(path, json={"previous_secret_hours": 1}, headers=keyed)
        assert once.status_code == twice.status_code == 200 and twice.headers.get("idempotent-replayed") == "true"
        assert once.json() == twice.json()
        await breach(omni, "third")
        await hook.wait_for(3)
        verified(once.json()["secret"], hook.received[2])
        assert len(hook.received[2].headers["webhook-signature"].split(" ")) == 2  # the leak's secret, for an hour

        # Bad input, another owner's endpoint, a missing one.
        for bad in (
            {"previous_secret_hours": 169},
            {"previous_secret_hours": -1},
            {"previous_secret_hours": True},  # not taken for 1 hour
            {"previous_secret_hours": "5"},
            {"keep": 1},
        ):
            refused = await omni.client.post(path, json=bad, headers=admin)
            assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
        _, tenant_key = await omni.tenant("other")
        assert (await omni.client.post(path, headers=omni.auth(tenant_key))).status_code == 404
        missing = "/v1/webhook-endpoints/00000000-0000-4000-8000-000000000000/rotate-secret"
        assert (await omni.client.post(missing, headers=admin)).status_code == 404
        deadline = time.monotonic() + 10
        while True:  # a refusal's entry is folded in the background
            params = {"action": "webhook_endpoint.rotate_secret"}
            entries = (await omni.client.get("/v1/audit", params=params, headers=admin)).json()["data"]
            outcomes = [(e["outcome"], e["resource"]) for e in entries]
            missing = ("rejected", "webhook-endpoints/00000000-0000-4000-8000-000000000000")
            if missing in outcomes or time.monotonic() > deadline:
                break
            await receivers_pause()
        resource = f"webhook-endpoints/{created['id']}"
        assert outcomes[:3] == [("accepted", resource)] * 3
        assert missing in outcomes
