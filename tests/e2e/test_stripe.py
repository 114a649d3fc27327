"""Stripe, in both modes, against stripe-mock (Stripe's own API mock) behind a recording proxy: a
finalized invoice is pushed once (customer, invoice, one item per line, finalize), a crash between
Stripe's answer and our record resends exactly the same idempotency keys, a push after success sends
nothing, an outage leaves the invoice finalized and it is pushed once Stripe is back; the webhook
moves our state on a good signature and records nothing on a bad or stale one."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from omni import failpoints
from omni.settings import Settings
from projections.invoices import BillingPeriod
from schemas.envelope import Envelope, decode
from stores import stripe as stripe_store
from streams.stripe_sync import Round, StripeSync, StripeUnavailable, stripe_client
from tests.e2e.conftest import ADMIN, Omni, embedded_settings, kafka_settings, served, services_or_skip
from tests.e2e.test_crash_restart_embedded import Server
from tests.e2e.test_invoices import after, close, invoices, setup, use
from tests.stripe_peer import RecordingProxy, Seen, stripe_mock_or_skip

SECRET = "whsec_omni_test"


@pytest.fixture(params=["embedded", "kafka"])
async def omni(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Omni]:
    """The e2e `omni`, with the webhook secret set (the sync is driven by the tests themselves)."""
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "data", stripe_webhook_secret=SECRET)
    else:
        services_or_skip()
        settings = kafka_settings(uuid.uuid4().hex[:12], stripe_webhook_secret=SECRET)
    async with served(settings) as running:
        yield running


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    recording = RecordingProxy(stripe_mock_or_skip())
    recording.start()
    yield recording
    recording.stop()


def sync_through(omni: Omni, proxy: RecordingProxy) -> StripeSync:
    settings = Settings(stripe_api_key="sk_test_omni", stripe_api_base=proxy.url)
    platform = omni.platform
    return StripeSync(platform.control, platform.db, stripe_client(settings, network_retries=0), platform.relay.wake)


async def one_invoice(omni: Omni) -> dict[str, Any]:
    """A tenant on the invoices tests' plan, its month closed: fee 1000, images 1500, tokens 300 (lines in that order)."""
    ((_, key),) = await setup(omni)
    await use(omni, key, tokens=2501, images=250)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    (invoice,) = await invoices(omni, key)
    return invoice


def calls(seen: list[Seen]) -> list[tuple[str, str, str | None]]:
    """(method, path with Stripe's ids as {id}, idempotency key): stripe-mock invents new ids each time."""
    return [(s.method, re.sub(r"/(in|cus|ii)_\w+", "/{id}", s.path), s.key) for s in seen]


def pushed(omni: Omni, invoice_id: str) -> str | None:
    with omni.platform.db.transaction() as tx:
        return stripe_store.stripe_invoice(tx, invoice_id)


async def logged(omni: Omni, topic: str) -> list[Envelope]:
    log = omni.platform.log
    return [
        decode(record.value)
        for partition in range(omni.platform.topics.partitions(topic))
        for record in await log.read(topic, partition, 0, 100_000)
    ]


async def test_a_finalized_invoice_is_pushed_once_with_keys_from_our_ids(omni: Omni, proxy: RecordingProxy) -> None:
    invoice = await one_invoice(omni)
    invoice_id, tenant_id = invoice["id"], invoice["tenant_id"]
    sync = sync_through(omni, proxy)

    assert await asyncio.to_thread(sync.push_once) == Round(pushed=1, refused=0)
    seen = proxy.take()
    assert calls(seen) == [
        ("POST", "/v1/customers", f"omni-customer-{tenant_id}"),
        ("POST", "/v1/invoices", f"omni-{invoice_id}-invoice"),
        ("POST", "/v1/invoiceitems", f"omni-{invoice_id}-item-1"),
        ("POST", "/v1/invoiceitems", f"omni-{invoice_id}-item-2"),
        ("POST", "/v1/invoiceitems", f"omni-{invoice_id}-item-3"),
        ("POST", "/v1/invoices/{id}/finalize", f"omni-{invoice_id}-finalize"),
    ]
    assert all(s.status == 200 for s in seen), seen  # stripe-mock validated every request against Stripe's spec
    customer, created, *items, _ = seen
    assert customer.params["metadata[omni_tenant_id]"] == tenant_id
    assert (created.params["currency"], created.params["metadata[omni_invoice_id]"]) == ("usd", invoice_id)
    assert [(i.params["amount"], i.params["currency"]) for i in items] == [("1000", "usd"), ("1500", "usd"), ("300", "usd")]
    assert sum(int(i.params["amount"]) for i in items) == invoice["total"]

    # Pushed again before the views hold the record (it is in the event store): nothing is sent.
    assert pushed(omni, invoice_id) is None
    assert await asyncio.to_thread(sync.push_once) == Round(pushed=0, refused=0)
    assert proxy.take() == []
    await omni.settle()  # and once they do, the invoice is no longer pending
    assert pushed(omni, invoice_id) is not None
    assert await asyncio.to_thread(sync.push_once) == Round(pushed=0, refused=0)
    assert proxy.take() == []
    audit = [
        e.data["action"] for e in await logged(omni, omni.platform.topics.audit) if e.data["resource"] == f"invoices/{invoice_id}"
    ]
    assert audit == ["invoice.finalize", "invoice.stripe_push"]
    got = await omni.client.get(f"/v1/invoices/{invoice_id}", headers=omni.auth(ADMIN))
    assert got.json()["status"] == "finalized"


@pytest.mark.parametrize("crash_on", [1, 2], ids=["after-the-customer", "after-finalize"])
async def test_a_crash_between_stripes_answer_and_our_record_resends_the_same_keys(
    omni: Omni, proxy: RecordingProxy, crash_on: int
) -> None:
    invoice = await one_invoice(omni)
    sync = sync_through(omni, proxy)
    failpoints.arm(failpoints.STRIPE_BEFORE_RECORD, "raise", on_hit=crash_on)
    try:
        with pytest.raises(failpoints.FailpointHit):
            await asyncio.to_thread(sync.push_once)
    finally:
        failpoints.disarm_all()
    first = calls(proxy.take())
    await omni.settle()
    assert pushed(omni, invoice["id"]) is None

    assert await asyncio.to_thread(sync.push_once) == Round(pushed=1, refused=0)
    retry = calls(proxy.take())
    if crash_on == 1:  # the customer was created, not recorded: created again with the same key, then the rest
        assert first == [("POST", "/v1/customers", f"omni-customer-{invoice['tenant_id']}")]
        assert retry[0] == first[0] and len(retry) == 6
    else:  # the customer was recorded: the invoice's requests again, exactly
        assert len(first) == 6 and retry == first[1:]
    await omni.settle()
    assert pushed(omni, invoice["id"]) is not None
    assert await asyncio.to_thread(sync.push_once) == Round(pushed=0, refused=0)
    assert proxy.take() == []


async def test_a_stripe_outage_loses_nothing_and_the_invoice_is_pushed_once_stripe_is_back(
    omni: Omni, proxy: RecordingProxy
) -> None:
    invoice = await one_invoice(omni)
    sync = sync_through(omni, proxy)

    proxy.unavailable = True  # Stripe answers 503
    with pytest.raises(StripeUnavailable):
        await asyncio.to_thread(sync.push_once)
    proxy.stop()  # Stripe refuses connections
    with pytest.raises(StripeUnavailable):
        await asyncio.to_thread(sync.push_once)
    await omni.settle()
    got = await omni.client.get(f"/v1/invoices/{invoice['id']}", headers=omni.auth(ADMIN))
    assert (got.status_code, got.json()["status"]) == (200, "finalized")
    assert pushed(omni, invoice["id"]) is None

    # The background loop backs off while Stripe is down, and pushes once it is back.
    proxy.start()
    stop = asyncio.Event()
    running = asyncio.create_task(sync.run(stop))
    try:
        deadline = time.monotonic() + 30
        while sum(s.status == 503 for s in proxy.seen) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sum(s.status == 503 for s in proxy.seen) >= 2  # retried, still down
        proxy.unavailable = False
        while pushed(omni, invoice["id"]) is None and time.monotonic() < deadline:
            await omni.settle()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running
    assert pushed(omni, invoice["id"]) is not None
    delivered = [s for s in proxy.take() if s.status == 200]
    assert [c[2] for c in calls(delivered)].count(f"omni-{invoice['id']}-finalize") == 1


async def test_invoices_stripe_refuses_wait_their_own_backoff_and_never_hold_up_the_others(
    omni: Omni, proxy: RecordingProxy
) -> None:
    tenants = await setup(omni, tenants=2)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    first, second = sorted((await invoices(omni, ADMIN)), key=lambda d: d["id"])  # the order they are pushed in
    assert {first["tenant_id"], second["tenant_id"]} == {t for t, _ in tenants}
    now = [1000.0]
    sync = sync_through(omni, proxy)
    sync.clock = lambda: now[0]
    proxy.refuse_invoices = {first["id"]}  # say, a currency Stripe takes from no one

    # One invoice a round: the refused one does not come back before its backoff, the next goes.
    assert await asyncio.to_thread(sync.push_once, 1) == Round(pushed=0, refused=1)
    assert await asyncio.to_thread(sync.push_once, 1) == Round(pushed=1, refused=0)
    await omni.settle()
    assert pushed(omni, first["id"]) is None and pushed(omni, second["id"]) is not None
    assert await asyncio.to_thread(sync.push_once, 1) == Round(pushed=0, refused=0)  # still in its backoff
    proxy.take()

    now[0] += 1.0  # its backoff (1 s after one refusal) has run out, and Stripe takes it now
    proxy.refuse_invoices = set()
    assert await asyncio.to_thread(sync.push_once, 1) == Round(pushed=1, refused=0)
    assert [c[2] for c in calls(proxy.take())][0] == f"omni-{first['id']}-invoice"
    await omni.settle()
    assert pushed(omni, first["id"]) is not None


async def test_what_an_admin_does_to_a_pushed_invoice_reaches_stripe_once(omni: Omni, proxy: RecordingProxy) -> None:
    invoice = await one_invoice(omni)
    sync = sync_through(omni, proxy)
    assert (await asyncio.to_thread(sync.push_once)).pushed == 1
    await omni.settle()
    proxy.take()
    assert await asyncio.to_thread(sync.mirror_once) == 0  # finalized: nothing to tell
    assert proxy.take() == []

    async def move(action: str) -> None:
        response = await omni.client.post(
            f"/v1/invoices/{invoice['id']}/{action}", json={"reason": "ops"}, headers=omni.auth(ADMIN)
        )
        assert response.status_code == 200, response.text
        await omni.settle()

    await move("mark-uncollectible")
    assert await asyncio.to_thread(sync.mirror_once) == 1
    await omni.settle()
    await move("mark-paid")  # paid by wire: Stripe marks it paid out of band
    assert await asyncio.to_thread(sync.mirror_once) == 1
    await omni.settle()
    assert await asyncio.to_thread(sync.mirror_once) == 0  # told once each
    seen = proxy.take()
    assert calls(seen) == [
        ("POST", "/v1/invoices/{id}/mark_uncollectible", f"omni-{invoice['id']}-uncollectible"),
        ("POST", "/v1/invoices/{id}/pay", f"omni-{invoice['id']}-paid"),
    ]
    assert seen[1].params == {"paid_out_of_band": "true"} and all(s.status == 200 for s in seen), seen
    audit = [
        e.data["action"]
        for e in await logged(omni, omni.platform.topics.audit)
        if e.data["resource"] == f"invoices/{invoice['id']}"
    ]
    assert audit[-4:] == ["invoice.uncollectible", "invoice.stripe_uncollectible", "invoice.paid", "invoice.stripe_paid"]


async def test_a_voided_invoice_is_voided_in_stripe_and_stripes_own_payments_are_not_sent_back(
    omni: Omni, proxy: RecordingProxy
) -> None:
    ((_, key), (_, other_key)) = await setup(omni, tenants=2)
    await use(omni, key, tokens=10)
    await use(omni, other_key, tokens=10)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    (voided,), (paid,) = await invoices(omni, key), await invoices(omni, other_key)
    sync = sync_through(omni, proxy)
    assert (await asyncio.to_thread(sync.push_once)).pushed == 2
    await omni.settle()
    proxy.take()

    response = await omni.client.post(
        f"/v1/invoices/{voided['id']}/void", json={"reason": "wrong plan"}, headers=omni.auth(ADMIN)
    )
    assert response.status_code == 200, response.text
    event = stripe_event("invoice.paid", paid["id"])
    assert (await webhook(omni, event, signed(event))).json()["outcome"] == "recorded"
    await omni.settle()
    assert await asyncio.to_thread(sync.mirror_once) == 1
    assert calls(proxy.take()) == [("POST", "/v1/invoices/{id}/void", f"omni-{voided['id']}-void")]


def signed(payload: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    """Headers as Stripe signs a webhook: t=<unix time>,v1=<HMAC-SHA256(secret, "<t>.<body>")>."""
    moment = int(time.time()) if at is None else at
    signature = hmac.new(secret.encode(), f"{moment}.".encode() + payload, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={moment},v1={signature}", "Content-Type": "application/json"}


def stripe_event(kind: str, invoice_id: str, *, event_id: str | None = None) -> bytes:
    invoice = {"id": "in_test", "object": "invoice", "metadata": {"omni_invoice_id": invoice_id}, "attempt_count": 1}
    event = {"id": event_id or f"evt_{uuid.uuid4().hex}", "object": "event", "type": kind, "created": int(time.time())}
    return orjson.dumps({**event, "data": {"object": invoice}})


async def webhook(omni: Omni, payload: bytes, headers: dict[str, str]) -> Any:
    response = await omni.client.post("/v1/webhooks/stripe", content=payload, headers=headers)
    await omni.settle()
    return response


async def test_webhooks_move_our_state_once_per_stripe_event(omni: Omni) -> None:
    invoice = await one_invoice(omni)
    control = omni.platform.topics.control

    failed = stripe_event("invoice.payment_failed", invoice["id"])
    first = await webhook(omni, failed, signed(failed))
    assert (first.status_code, first.json()["outcome"]) == (200, "recorded"), first.text
    again = await webhook(omni, failed, signed(failed))  # Stripe redelivers
    assert (again.status_code, again.json()["outcome"]) == (200, "unchanged"), again.text
    failures = [e.data for e in await logged(omni, control) if e.type == "omni.invoice.payment_failed"]
    assert [(f["invoice_id"], f["source"]) for f in failures] == [(invoice["id"], "stripe")]
    assert (await omni.client.get(f"/v1/invoices/{invoice['id']}", headers=omni.auth(ADMIN))).json()["status"] == "finalized"

    paid = stripe_event("invoice.paid", invoice["id"])
    first = await webhook(omni, paid, signed(paid))
    assert (first.status_code, first.json()["outcome"]) == (200, "recorded"), first.text
    again = await webhook(omni, paid, signed(paid))
    assert (again.status_code, again.json()["outcome"]) == (200, "unchanged"), again.text
    got = await omni.client.get(f"/v1/invoices/{invoice['id']}", headers=omni.auth(ADMIN))
    assert got.json()["status"] == "paid"
    moves = [e.data for e in await logged(omni, control) if e.type == "omni.invoice.status_changed"]
    assert [(m["status"], m["source"]) for m in moves] == [("paid", "stripe")]

    other = stripe_event("customer.created", invoice["id"])
    ignored = await webhook(omni, other, signed(other))
    assert (ignored.status_code, ignored.json()["outcome"]) == (200, "ignored"), ignored.text
    stranger = stripe_event("invoice.paid", str(uuid.uuid4()))
    ignored = await webhook(omni, stranger, signed(stranger))
    assert (ignored.status_code, ignored.json()["outcome"]) == (200, "ignored"), ignored.text


async def test_a_paid_event_for_a_voided_invoice_is_refused_and_audited(omni: Omni) -> None:
    invoice = await one_invoice(omni)
    voided = await omni.client.post(f"/v1/invoices/{invoice['id']}/void", json={"reason": "ops"}, headers=omni.auth(ADMIN))
    assert voided.status_code == 200, voided.text
    await omni.settle()
    paid = stripe_event("invoice.paid", invoice["id"])
    refused = await webhook(omni, paid, signed(paid))
    assert (refused.status_code, refused.json()["outcome"]) == (200, "refused"), refused.text
    audit = [e.data for e in await logged(omni, omni.platform.topics.audit) if e.data["action"] == "invoice.paid"]
    assert [(a["outcome"], a["actor"]["key_id"]) for a in audit] == [("rejected", "stripe-webhook")]
    assert (await omni.client.get(f"/v1/invoices/{invoice['id']}", headers=omni.auth(ADMIN))).json()["status"] == "void"


async def test_a_bad_or_stale_signature_is_refused_and_nothing_is_recorded(omni: Omni) -> None:
    invoice = await one_invoice(omni)
    topics = omni.platform.topics
    before = [len(await logged(omni, t)) for t in (topics.control, topics.audit)]
    paid = stripe_event("invoice.paid", invoice["id"])
    tampered = paid.replace(b"invoice.paid", b"invoice.PAID")
    for payload, headers in [
        (paid, signed(paid, secret="whsec_someone_else")),  # signed with another secret
        (paid, signed(paid, at=int(time.time()) - 600)),  # a replay, older than the 5 minutes' tolerance
        (tampered, signed(paid)),  # the body changed after signing
        (paid, {"Content-Type": "application/json"}),  # no signature
        (paid, {"Content-Type": "application/json", **omni.auth(ADMIN)}),  # an API key is no signature
        (b"not json", signed(b"not json")),  # signed, but no Stripe event
        *((body, signed(body)) for body in (b"[1, 2]", b'"text"', b"null", b"5")),  # JSON, but no object (was a 500)
        (b'{"type": "invoice.paid"}', signed(b'{"type": "invoice.paid"}')),  # an object without its id
    ]:
        response = await webhook(omni, payload, headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert [len(await logged(omni, t)) for t in (topics.control, topics.audit)] == before
    assert (await omni.client.get(f"/v1/invoices/{invoice['id']}", headers=omni.auth(ADMIN))).json()["status"] == "finalized"


def test_omni_serve_pushes_in_the_background_when_a_key_is_set(tmp_path: Path, proxy: RecordingProxy) -> None:
    """The wiring: `omni serve` (embedded) with OMNI_STRIPE_API_KEY pushes a closed month's invoice by itself."""
    server = Server(tmp_path / "data")
    configured = {
        "OMNI_STRIPE_API_KEY": "sk_test_omni",
        "OMNI_STRIPE_API_BASE": proxy.url,
        "OMNI_BILLING_AUTO_CLOSE": "false",
        # A month long over, billed for usage sent late (a tenant created after a month owes no fee for it).
        "OMNI_ACCEPTANCE_WINDOW_SECONDS": str(20 * 366 * 86400),
    }
    os.environ.update(configured)
    try:
        server.start()
    finally:
        for name in configured:
            del os.environ[name]
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        tenant = httpx.post(server.url + "/v1/tenants", json={"name": "acme", "plan": "flat"}, headers=admin).json()
        meter = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
        assert httpx.post(server.url + "/v1/meters", json=meter, headers=admin).status_code == 201
        price = {"meter": "tokens", "model": "per_unit", "unit_price": "0.01"}
        plan = {"name": "Flat", "currency": "EUR", "fee": "25.00", "prices": [price]}
        assert httpx.put(server.url + "/v1/plans/flat", json=plan, headers=admin).status_code == 201
        assigned = httpx.put(server.url + f"/v1/tenants/{tenant['id']}/plan", json={"plan": "flat"}, headers=admin)
        assert assigned.status_code == 204, assigned.text
        usage = {"specversion": "1.0", "id": "u-1", "source": "gateway", "type": "inference", "subject": "c-1"}
        usage |= {"time": "2020-01-15T12:00:00Z", "data": {"tokens": 500}}
        auth = {"Authorization": f"Bearer {tenant['api_key']}", "Content-Type": "application/cloudevents+json"}
        assert httpx.post(server.url + "/v1/events", json=usage, headers=auth).status_code == 202
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # a close waits for no view: 503 while the meters lag the log
            closed = httpx.post(server.url + "/v1/billing/periods/2020-01/close", headers=admin, timeout=30)
            if closed.status_code != 503:
                break
            time.sleep(0.2)
        assert closed.status_code == 200 and closed.json()["invoices"] == 1, closed.text
        deadline = time.monotonic() + 20
        while not any(s.path.endswith("/finalize") for s in proxy.seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        keys = [s.key for s in proxy.seen if s.status == 200]
        assert keys[0] == f"omni-customer-{tenant['id']}" and keys[-1].endswith("-finalize"), keys
        (item,) = [s.params for s in proxy.seen if s.path == "/v1/invoiceitems"]
        assert (item["amount"], item["currency"]) == ("500", "eur")  # 500 tokens at 0.01; no fee before the tenant was
    finally:
        server.stop()
