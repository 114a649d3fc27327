"""Invoices over the API, in both modes: a month closed into invoices priced exactly, the running
draft, late usage billed as an adjustment (never by changing a finalized invoice), a credit note for
a correction downwards, gapless numbers, byte-identical after the views are rebuilt, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from projections.invoices import BillingPeriod
from schemas.envelope import decode
from schemas.plans import EXAMPLE_PLAN
from stores import schema
from tests.conftest import cloud_event
from tests.e2e.conftest import ADMIN, Omni

TOKENS = {"slug": "tokens", "event_type": "inference", "aggregation": "SUM", "value_property": "$.data.tokens"}
CALLS = {"slug": "calls", "event_type": "request", "aggregation": "COUNT"}
IMAGES = {"slug": "images", "event_type": "image", "aggregation": "SUM", "value_property": "$.data.images"}
FASTEST = {"slug": "fastest", "event_type": "inference", "aggregation": "MAX", "value_property": "$.data.tokens"}

PLAN = {key: value for key, value in EXAMPLE_PLAN.items() if key != "entitlements"}


async def setup(omni: Omni, *, tenants: int = 1) -> list[tuple[str, str]]:
    for meter in (TOKENS, CALLS, IMAGES):
        await omni.meter(**meter)
    response = await omni.client.put("/v1/plans/pro", json=PLAN, headers=omni.auth(ADMIN))
    assert response.status_code == 201, response.text
    made = []
    for index in range(tenants):
        tenant_id, key = await omni.tenant(f"acme-{index}")
        response = await omni.client.put(f"/v1/tenants/{tenant_id}/plan", json={"plan": "pro"}, headers=omni.auth(ADMIN))
        assert response.status_code == 204, response.text
        made.append((tenant_id, key))
    await omni.settle()
    return made


async def use(omni: Omni, key: str, *, tokens: int = 0, calls: int = 0, images: int = 0) -> None:
    """Usage now: `tokens` in one event, `calls` request events, `images` in one event."""
    events = []
    if tokens:
        events.append(cloud_event(uuid.uuid4().hex, data={"tokens": tokens}))
    if images:
        events.append(cloud_event(uuid.uuid4().hex, type_="image", data={"images": images}))
    events += [cloud_event(uuid.uuid4().hex, type_="request") for _ in range(calls)]
    for start in range(0, len(events), 1000):
        response = await omni.send(key, events[start : start + 1000])
        assert response.status_code == 202, response.text


async def close(omni: Omni, period: str, *, key: str = ADMIN) -> httpx.Response:
    """Close `period`, settling the views meanwhile (no background runner here): the close waits for
    them to fold what the log held when it began."""
    await omni.settle()
    closing = asyncio.create_task(omni.client.post(f"/v1/billing/periods/{period}/close", headers=omni.auth(key)))
    while not closing.done():
        await omni.settle()
        await asyncio.sleep(0.01)
    response = closing.result()
    await omni.settle()
    return response


def after(period: BillingPeriod, hours: int = 1) -> datetime:
    return period.end + timedelta(hours=hours)


async def documented(omni: Omni, schema: str, body: Any) -> Any:
    """`body`, once checked against the OpenAPI document's `schema` (a client generated from the
    document reads it): every invoice and credit note the tests read passes here, each kind of line."""
    document = (await omni.client.get("/openapi.json")).json()
    validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{schema}", "components": document["components"]})
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == [], errors
    return body


async def invoices(omni: Omni, key: str) -> list[dict[str, Any]]:
    response = await omni.client.get("/v1/invoices", headers=omni.auth(key))
    assert response.status_code == 200, response.text
    return (await documented(omni, "InvoiceList", response.json()))["data"]  # type: ignore[no-any-return]


async def test_a_closed_month_is_invoiced_exactly_once(omni: Omni) -> None:
    ((tenant_id, key),) = await setup(omni)
    await use(omni, key, tokens=2501, calls=1234, images=250)
    await omni.settle()
    this_month = BillingPeriod.of(datetime.now(UTC))

    draft = await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(key))
    assert draft.status_code == 200, draft.text
    await documented(omni, "UpcomingInvoice", draft.json())
    assert (draft.json()["status"], draft.json()["number"], draft.json()["total"]) == ("draft", None, 3934)
    assert draft.json()["credit_note"] is None  # nothing to credit

    early = await close(omni, this_month.text)
    assert early.status_code == 409 and early.json()["type"].endswith("period-not-over"), early.text

    omni.platform.clock = lambda: after(this_month)
    closed = await close(omni, this_month.text)
    assert closed.status_code == 200, closed.text
    assert closed.json() | {"closed_at": None} == {
        "period": this_month.text,
        "closed_at": None,
        "invoices": 1,
        "credit_notes": 0,
        "totals": {"USD": 3934},
        "held": [],
    }

    (invoice,) = await invoices(omni, key)
    assert invoice["number"] == f"{tenant_id.replace('-', '')[:8].upper()}-0001"
    assert (invoice["status"], invoice["currency"], invoice["minor_units"], invoice["period"]) == (
        "finalized",
        "USD",
        2,
        this_month.text,
    )
    amounts = {line.get("meter", line["type"]): line["amount"] for line in invoice["lines"]}
    assert amounts == {"fee": 1000, "tokens": 300, "calls": 1134, "images": 1500}
    assert (invoice["subtotal"], invoice["total"]) == (3934, 3934)
    tokens = next(line for line in invoice["lines"] if line.get("meter") == "tokens")
    assert [(t["quantity"], t["amount"]) for t in tokens["tiers"]] == [(1000, "0"), (1501, "3.002")]

    again = await close(omni, this_month.text)
    assert again.status_code == 409, again.text
    one = await omni.client.get(f"/v1/invoices/{invoice['id']}", headers=omni.auth(key))
    assert one.status_code == 200 and one.json() == invoice


async def test_late_usage_is_billed_on_the_next_invoice_and_a_correction_downwards_is_credited(omni: Omni) -> None:
    ((tenant_id, key),) = await setup(omni)
    await use(omni, key, tokens=2501, images=250)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    (first,) = await invoices(omni, key)
    assert first["total"] == 1000 + 300 + 1500

    # Late, inside the acceptance window: 500 more tokens, and images corrected down by 150.
    await use(omni, key, tokens=500, images=-150)
    await omni.settle()
    draft = await documented(
        omni, "UpcomingInvoice", (await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(key))).json()
    )
    adjustment = next(line for line in draft["lines"] if line["type"] == "adjustment")
    # 3001 tokens: 2001 x 0.002 = 4.002 USD -> 400 cents, billed 300 before: 100 more.
    assert (adjustment["meter"], adjustment["period"], adjustment["quantity"], adjustment["amount"]) == (
        "tokens",
        this_month.text,
        500,
        100,
    )
    # The credit note the next close issues beside it, shown as a draft: 10.00 back for the images.
    pending = draft["credit_note"]
    assert (pending["kind"], pending["status"], pending["number"], pending["total"]) == ("credit_note", "draft", None, 1000)

    next_month = BillingPeriod.parse(f"{this_month.end:%Y-%m}")
    assert next_month is not None
    omni.platform.clock = lambda: after(next_month)
    closed = await close(omni, next_month.text)
    assert closed.status_code == 200, closed.text
    assert (closed.json()["invoices"], closed.json()["credit_notes"]) == (1, 1)

    found = {doc["number"]: doc for doc in await invoices(omni, key)}
    prefix = tenant_id.replace("-", "")[:8].upper()
    assert sorted(found) == [f"{prefix}-0001", f"{prefix}-0002", f"{prefix}-CN-0001"]
    assert found[f"{prefix}-0001"] == first  # the finalized invoice never changes
    second = found[f"{prefix}-0002"]
    assert [(line["type"], line.get("period"), line["amount"]) for line in second["lines"]] == [
        ("fee", None, 1000),
        ("adjustment", this_month.text, 100),
    ]
    credit = found[f"{prefix}-CN-0001"]
    # 100 images: 1 package (5.00), billed 3 packages (15.00) before: 10.00 back.
    assert [(line["meter"], line["quantity"], line["amount"]) for line in credit["lines"]] == [("images", -150, 1000)]
    assert (credit["kind"], credit["total"]) == ("credit_note", 1000)
    assert (credit["id"], credit["lines"]) == (pending["id"], pending["lines"])  # what the draft showed

    # The audit trail says why the second invoice bills the month before.
    topic = omni.platform.topics.audit
    entries = [
        decode(record.value).data
        for partition in range(omni.platform.topics.partitions(topic))
        for record in await omni.platform.log.read(topic, partition, 0, 10_000)
    ]
    why = [e["reason"] for e in entries if e["action"] == "invoice.finalize" and e["resource"] == f"invoices/{second['id']}"]
    assert why == [f"closing {next_month.text}; usage of {this_month.text} changed after it was invoiced"]


async def test_a_month_that_ended_before_a_tenant_was_created_bills_it_no_fee(omni: Omni) -> None:
    ((tenant_id, key),) = await setup(omni)  # created now, on a plan with a fee
    this_month = BillingPeriod.of(datetime.now(UTC))
    last_month = this_month.before()
    closed = await close(omni, last_month.text)
    assert closed.status_code == 200, closed.text
    assert (closed.json()["invoices"], closed.json()["totals"]) == (0, {})
    assert await invoices(omni, key) == []

    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    (invoice,) = await invoices(omni, key)
    assert (invoice["period"], invoice["tenant_id"], invoice["total"]) == (this_month.text, tenant_id, 1000)


async def test_numbers_are_gapless_per_tenant_and_other_tenants_see_nothing(omni: Omni) -> None:
    (first, second) = await setup(omni, tenants=2)
    await use(omni, first[1], tokens=10)
    await use(omni, second[1], tokens=20)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    (mine,) = await invoices(omni, first[1])
    (theirs,) = await invoices(omni, second[1])
    assert mine["number"].endswith("-0001") and theirs["number"].endswith("-0001")
    assert mine["tenant_id"] == first[0] and theirs["tenant_id"] == second[0]
    hidden = await omni.client.get(f"/v1/invoices/{theirs['id']}", headers=omni.auth(first[1]))
    assert hidden.status_code == 404, hidden.text
    other = await omni.client.get("/v1/invoices", params={"tenant": second[0]}, headers=omni.auth(first[1]))
    assert other.status_code == 404, other.text
    # One invoice, its tenant named: by a key naming another tenant, or by the admin naming another owner, 404.
    for key, named, status in (
        (first[1], second[0], 404),
        (ADMIN, second[0], 404),
        (ADMIN, first[0], 200),
        (first[1], first[0], 200),
    ):
        one = await omni.client.get(f"/v1/invoices/{mine['id']}", params={"tenant": named}, headers=omni.auth(key))
        assert one.status_code == status, (key, named, one.text)
    for cursor in ("x~y", f"{mine['issued_at']}~not-an-id", f"yesterday~{mine['id']}"):  # compared as text, x~y paged all
        refused = await omni.client.get("/v1/invoices", params={"before": cursor}, headers=omni.auth(first[1]))
        assert refused.status_code == 422 and refused.json()["type"].endswith("/invalid-cursor"), refused.text
    older = await omni.client.get(
        "/v1/invoices", params={"before": f"{mine['issued_at']}~{mine['id']}"}, headers=omni.auth(first[1])
    )
    assert older.status_code == 200 and older.json()["data"] == [], "nothing of its before its first invoice"
    every = await omni.client.get("/v1/invoices", params={"period": this_month.text}, headers=omni.auth(ADMIN))
    assert sorted(d["tenant_id"] for d in every.json()["data"]) == sorted([first[0], second[0]])


async def test_bad_billing_input_is_refused_with_problems(omni: Omni) -> None:
    (_, key), *_ = await setup(omni)
    await omni.meter(**FASTEST)
    cases = [
        ({**PLAN, "currency": "ABC"}, "not an ISO 4217"),
        ({**PLAN, "prices": [{"meter": "tokens", "model": "graduated", "tiers": [{"up_to": 10, "unit_price": "1"}]}]}, "gap"),
        ({**PLAN, "prices": [{"meter": "fastest", "model": "per_unit", "unit_price": "1"}]}, "SUM and COUNT"),
        ({**PLAN, "prices": [{"meter": "nowhere", "model": "per_unit", "unit_price": "1"}]}, "not defined"),
        ({**PLAN, "currency": "EUR"}, "cannot change"),
    ]
    for body, says in cases:
        response = await omni.client.put("/v1/plans/pro", json=body, headers=omni.auth(ADMIN))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert says in response.text, response.text
    plan = (await omni.client.get("/v1/plans/pro", headers=omni.auth(ADMIN))).json()
    assert (plan["version"], plan["currency"], plan["fee"]) == (1, "USD", "10.00")

    for period, status in (("2026-13", 422), ("next", 422), ("2999-01", 409)):
        response = await close(omni, period)
        assert response.status_code == status, response.text
    refused = await close(omni, "2020-01", key=key)
    assert refused.status_code == 403, refused.text
    missing = await omni.client.get(f"/v1/invoices/{uuid.uuid4()}", headers=omni.auth(key))
    assert missing.status_code == 404, missing.text
    for route in ("/v1/invoices", "/v1/invoices/upcoming"):
        unknown = await omni.client.get(route, params={"tenant": str(uuid.uuid4())}, headers=omni.auth(ADMIN))
        assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json", unknown.text


async def test_a_plan_that_starts_charging_keeps_its_tenants_currency(omni: Omni) -> None:
    ((tenant_id, key),) = await setup(omni)
    await use(omni, key, tokens=10)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200  # invoiced in USD
    await use(omni, key, tokens=2000)  # late usage of the closed month: an adjustment next month
    free = await omni.client.put("/v1/plans/free", json={"entitlements": []}, headers=omni.auth(ADMIN))
    assert free.status_code == 201, free.text
    moved = await omni.client.put(f"/v1/tenants/{tenant_id}/plan", json={"plan": "free"}, headers=omni.auth(ADMIN))
    assert moved.status_code == 204, moved.text
    await omni.settle()

    euros = {"entitlements": [], "currency": "EUR", "fee": "5.00"}
    refused = await omni.client.put("/v1/plans/free", json=euros, headers=omni.auth(ADMIN))
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json", refused.text
    assert refused.json()["errors"] == [
        {"location": "body.currency", "reason": "a tenant keeps the currency it is invoiced in (USD)"}
    ]
    plan = (await omni.client.get("/v1/plans/free", headers=omni.auth(ADMIN))).json()
    assert (plan["version"], plan["currency"]) == (1, None)
    # The upcoming invoice (its adjustment priced in USD) and the next close still work.
    draft = await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(key))
    assert draft.status_code == 200 and draft.json()["currency"] == "USD", draft.text

    dollars = await omni.client.put("/v1/plans/free", json={**euros, "currency": "USD"}, headers=omni.auth(ADMIN))
    assert dollars.status_code == 200 and dollars.json()["version"] == 2, dollars.text
    await omni.settle()
    draft = await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(key))
    assert draft.status_code == 200, draft.text
    # 2,010 tokens: 1,010 past the free tier at 0.002, priced by the plan that priced the month (pro v1).
    assert [(line["type"], line["amount"]) for line in draft.json()["lines"]] == [("fee", 500), ("adjustment", 202)]


async def test_a_tenant_too_large_to_invoice_is_held_and_every_other_tenant_is_invoiced(omni: Omni) -> None:
    ((held_id, held_key), (_, key)) = await setup(omni, tenants=2)
    # 10^28 tokens (a meter takes values up to 10^38), past the 28 digits of Python's default decimal
    # context: past 1,000 free, 0.002 each is 2 x 10^25 cents, more than an invoice holds.
    huge = "10000000000000000000000000000"
    sent = await omni.send(held_key, [cloud_event(uuid.uuid4().hex, data={"tokens": huge})])
    assert sent.status_code == 202, sent.text
    await use(omni, key, tokens=1500)
    await omni.settle()
    draft = await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(held_key))
    assert draft.status_code == 422 and draft.json()["type"].endswith("/unbillable-amount"), draft.text
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)

    closed = await close(omni, this_month.text)
    assert closed.status_code == 200, closed.text
    assert (closed.json()["invoices"], closed.json()["totals"]) == (1, {"USD": 1100}), closed.text  # the fee, 500 tokens
    ((held,),) = [closed.json()["held"]]
    assert held["tenant_id"] == held_id and "more than an invoice holds" in held["reason"], held
    assert await invoices(omni, held_key) == []
    assert [(i["period"], i["total"]) for i in await invoices(omni, key)] == [(this_month.text, 1100)]
    periods = await omni.client.get("/v1/billing/periods", headers=omni.auth(ADMIN))
    assert periods.status_code == 200, periods.text
    assert [(p["period"], p["documents"], [h["tenant_id"] for h in p["held"]]) for p in periods.json()["data"]] == [
        (this_month.text, 1, [held_id])
    ]
    assert (await omni.client.get("/v1/billing/periods", headers=omni.auth(key))).status_code == 403
    # The held tenants are folded from the log like the rest: views rebuilt from it hold them again.
    with omni.platform.db.transaction() as tx:
        dropped = set(re.findall(r"DROP TABLE IF EXISTS (\w+)", schema.SCHEMA))
        for table in set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema.SCHEMA)) - dropped:
            tx.execute(f"DELETE FROM {table}")
    await omni.settle()
    rebuilt = await omni.client.get("/v1/billing/periods", headers=omni.auth(ADMIN))
    assert rebuilt.json() == periods.json()
    trail = await omni.client.get("/v1/audit", params={"tenant": held_id}, headers=omni.auth(ADMIN))
    assert [e["action"] for e in trail.json()["data"] if e["action"] == "invoice.hold"] == ["invoice.hold"], trail.text

    # Closed again before anything changed: 422 naming the tenant, and nothing issued.
    again = await close(omni, this_month.text)
    assert again.status_code == 422 and again.json()["type"].endswith("/unbillable-amount"), again.text
    assert held_id in again.text and await invoices(omni, held_key) == []

    # Next month's draft and close leave the held month out: it is billed by closing that month
    # again, never as an adjustment (which would be as unbillable).
    omni.platform.clock = lambda: after(this_month, hours=2)
    draft = await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(held_key))
    assert draft.status_code == 200, draft.text
    assert [line["type"] for line in draft.json()["lines"]] == ["fee"], draft.text
    next_month = BillingPeriod.parse(f"{this_month.end:%Y-%m}")
    assert next_month is not None
    omni.platform.clock = lambda: after(next_month)
    closed = await close(omni, next_month.text)
    assert (closed.status_code, closed.json().get("held")) == (200, []), closed.text
    ((period, lines),) = [(i["period"], i["lines"]) for i in await invoices(omni, held_key)]
    assert (period, [line["type"] for line in lines]) == (next_month.text, ["fee"])

    # The tenant corrects the month's usage: closing it again invoices the tenant, once.
    fixed = await omni.send(held_key, [cloud_event(uuid.uuid4().hex, data={"tokens": "-" + huge})])
    assert fixed.status_code == 202, fixed.text
    await use(omni, held_key, tokens=2000)
    reclosed = await close(omni, this_month.text)
    assert reclosed.status_code == 200, reclosed.text
    assert (reclosed.json()["invoices"], reclosed.json()["totals"], reclosed.json()["held"]) == (1, {"USD": 1200}, [])
    invoice = next(i for i in await invoices(omni, held_key) if i["period"] == this_month.text)
    assert (invoice["total"], invoice["number"][-5:]) == (1200, "-0002")  # after next month's
    assert (await close(omni, this_month.text)).status_code == 409
    periods = await omni.client.get("/v1/billing/periods", headers=omni.auth(ADMIN))
    assert [(p["period"], p["documents"], p["held"]) for p in periods.json()["data"]] == [
        (next_month.text, 2, []),
        (this_month.text, 2, []),
    ]


async def test_an_invoice_is_voided_with_a_credit_note_and_settled_states_stay_settled(omni: Omni) -> None:
    ((tenant_id, key), (_, other_key)) = await setup(omni, tenants=2)
    await use(omni, key, tokens=10)
    await use(omni, other_key, tokens=10)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    (invoice,) = await invoices(omni, key)
    (other,) = await invoices(omni, other_key)

    async def move(invoice_id: str, action: str, reason: str = "ops") -> httpx.Response:
        response = await omni.client.post(
            f"/v1/invoices/{invoice_id}/{action}", json={"reason": reason}, headers=omni.auth(ADMIN)
        )
        await omni.settle()
        return response

    voided = await move(invoice["id"], "void", "billed the wrong plan")
    assert voided.status_code == 200, voided.text
    credit = (await documented(omni, "InvoiceChanged", voided.json()))["credit_note"]
    assert voided.json()["invoice"]["status"] == "void"
    assert (credit["kind"], credit["total"], credit["number"]) == (
        "credit_note",
        invoice["total"],
        invoice["number"].replace("-0001", "-CN-0001"),
    )
    assert credit["reason"] == f"voids {invoice['number']}: billed the wrong plan"
    assert credit["lines"] == [
        {"type": "void", "invoice": invoice["id"], "number": invoice["number"], "amount": invoice["total"]}
    ]
    listed = {d["id"]: d["status"] for d in await invoices(omni, key)}
    assert listed == {invoice["id"]: "void", credit["id"]: "finalized"}

    again = await move(invoice["id"], "void")
    assert again.status_code == 200 and again.json()["credit_note"] is None, again.text  # no second credit note
    assert (await move(invoice["id"], "mark-paid")).status_code == 409  # void is final

    assert (await move(other["id"], "mark-uncollectible", "customer vanished")).json()["invoice"]["status"] == "uncollectible"
    assert (await move(other["id"], "mark-paid", "paid by wire")).json()["invoice"]["status"] == "paid"
    assert (await move(other["id"], "void")).status_code == 409  # paid is final
    assert (await move(credit["id"], "void")).status_code == 409  # a credit note is final as issued
    no_reason = await omni.client.post(f"/v1/invoices/{other['id']}/void", json={}, headers=omni.auth(ADMIN))
    assert no_reason.status_code == 422, no_reason.text
    assert tenant_id == invoice["tenant_id"]


async def invoiced_5000_tokens(omni: Omni) -> tuple[str, BillingPeriod, dict[str, Any]]:
    """A tenant that used 5000 tokens this month, the month closed: its key, the month, its invoice."""
    ((_, key),) = await setup(omni)
    await use(omni, key, tokens=5000)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    (invoice,) = await invoices(omni, key)
    return key, this_month, invoice


async def test_a_voided_months_usage_is_never_credited_again_and_only_later_usage_is_billed(omni: Omni) -> None:
    """The void credited the whole invoice: a correction downwards of its month must credit nothing
    more (it used to credit the difference a second time), and usage reported later, past what the
    void forgave, is billed as late usage, priced on the month's whole usage: the forgiven 5000 took
    the free tier, so the void forgives what its invoice charged and no more."""
    key, this_month, invoice = await invoiced_5000_tokens(omni)
    assert invoice["total"] == 1000 + 800  # the fee, and 4000 tokens past the free 1000 at 0.002
    voided = await omni.client.post(f"/v1/invoices/{invoice['id']}/void", json={"reason": "goodwill"}, headers=omni.auth(ADMIN))
    assert voided.status_code == 200 and voided.json()["credit_note"]["total"] == 1800, voided.text
    await omni.settle()

    async def upcoming() -> dict[str, Any]:
        await omni.settle()
        response = await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(key))
        assert response.status_code == 200, response.text
        return await documented(omni, "UpcomingInvoice", response.json())  # type: ignore[no-any-return]

    await use(omni, key, tokens=-1000)  # corrected down: nothing was paid for the month, nothing to credit
    draft = await upcoming()
    assert draft["credit_note"] is None, draft["credit_note"]
    assert [line["type"] for line in draft["lines"]] == ["fee"]

    await use(omni, key, tokens=3000)  # 7000 now: 2000 past the 5000 forgiven
    draft = await upcoming()
    adjustment = next(line for line in draft["lines"] if line["type"] == "adjustment")
    assert {k: adjustment[k] for k in ("quantity", "billed_quantity", "forgiven_quantity", "corrected_quantity", "amount")} == {
        "quantity": 2000,
        "billed_quantity": 0,
        "forgiven_quantity": 5000,
        "corrected_quantity": 7000,
        "amount": 400,  # 2000 tokens at 0.002: the free 1000 were among the 5000 forgiven
    }

    next_month = BillingPeriod.parse(f"{this_month.end:%Y-%m}")
    assert next_month is not None
    omni.platform.clock = lambda: after(next_month)
    closed = await close(omni, next_month.text)
    assert (closed.json()["invoices"], closed.json()["credit_notes"]) == (1, 0), closed.text
    second = next(d for d in await invoices(omni, key) if d["period"] == next_month.text)
    assert [(line["type"], line["amount"]) for line in second["lines"]] == [("fee", 1000), ("adjustment", 400)]


async def test_an_invoice_whose_month_was_credited_since_cannot_be_voided(omni: Omni) -> None:
    """Corrected downwards and credited by the next close, November's invoice still charges less
    than its total: a void giving the whole total back would credit the difference twice (409)."""
    key, this_month, invoice = await invoiced_5000_tokens(omni)
    await use(omni, key, tokens=-2000)
    next_month = BillingPeriod.parse(f"{this_month.end:%Y-%m}")
    assert next_month is not None
    omni.platform.clock = lambda: after(next_month)
    closed = await close(omni, next_month.text)
    assert closed.json()["credit_notes"] == 1, closed.text
    refused = await omni.client.post(f"/v1/invoices/{invoice['id']}/void", json={"reason": "x"}, headers=omni.auth(ADMIN))
    assert refused.status_code == 409 and "corrected downwards" in refused.json()["detail"], refused.text
    await omni.settle()
    assert {d["id"]: d["status"] for d in await invoices(omni, key)}[invoice["id"]] == "finalized", "nothing changed"
    paid = await omni.client.post(f"/v1/invoices/{invoice['id']}/mark-paid", json={"reason": "wire"}, headers=omni.auth(ADMIN))
    assert paid.status_code == 200, "its other moves stand"


async def test_invoices_are_byte_identical_after_the_views_are_rebuilt_from_the_log(omni: Omni) -> None:
    tenants = await setup(omni, tenants=3)
    for index, (_, key) in enumerate(tenants):
        await use(omni, key, tokens=1000 + 777 * index, calls=3 * index, images=99 + index)
    this_month = BillingPeriod.of(datetime.now(UTC))
    omni.platform.clock = lambda: after(this_month)
    assert (await close(omni, this_month.text)).status_code == 200
    await use(omni, tenants[0][1], tokens=5000)  # late: billed next month
    next_month = BillingPeriod.parse(f"{this_month.end:%Y-%m}")
    assert next_month is not None
    omni.platform.clock = lambda: after(next_month)
    assert (await close(omni, next_month.text)).status_code == 200
    paid = await omni.client.post(
        f"/v1/invoices/{(await invoices(omni, tenants[1][1]))[0]['id']}/mark-paid",
        json={"reason": "wire"},
        headers=omni.auth(ADMIN),
    )
    assert paid.status_code == 200, paid.text
    await omni.settle()

    def stored() -> list[tuple[str, str, str, str]]:
        with omni.platform.db.transaction() as tx:
            rows = tx.execute("SELECT id, document, digest, status FROM invoices ORDER BY id")
        return [tuple(map(str, row)) for row in rows]  # type: ignore[misc]

    before = stored()
    assert len(before) == 6  # each of three tenants, each month (the plan has a fee)
    assert all(digest == hashlib.sha256(document.encode()).hexdigest() for _, document, digest, _ in before)

    with omni.platform.db.transaction() as tx:  # an empty view store
        dropped = set(re.findall(r"DROP TABLE IF EXISTS (\w+)", schema.SCHEMA))
        for table in set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema.SCHEMA)) - dropped:
            tx.execute(f"DELETE FROM {table}")
    assert stored() == []
    await omni.settle()
    assert stored() == before


async def test_concurrent_closes_number_gaplessly_and_close_each_period_once(omni: Omni) -> None:
    tenants = await setup(omni, tenants=4)
    for _, key in tenants:
        await use(omni, key, tokens=1500)
    this_month = BillingPeriod.of(datetime.now(UTC))
    next_month = BillingPeriod.parse(f"{this_month.end:%Y-%m}")
    assert next_month is not None
    omni.platform.clock = lambda: after(next_month)
    await omni.settle()
    periods = [this_month.text, next_month.text, this_month.text, next_month.text]
    closing = [asyncio.create_task(omni.client.post(f"/v1/billing/periods/{p}/close", headers=omni.auth(ADMIN))) for p in periods]
    while not all(task.done() for task in closing):
        await omni.settle()
        await asyncio.sleep(0.01)
    await omni.settle()
    statuses = sorted(task.result().status_code for task in closing)
    assert statuses == [200, 200, 409, 409], [task.result().text for task in closing]
    for tenant_id, key in tenants:
        numbers = sorted(doc["number"] for doc in await invoices(omni, key))
        prefix = tenant_id.replace("-", "")[:8].upper()
        assert numbers == [f"{prefix}-0001", f"{prefix}-0002"]  # one per month, in whichever order they closed


async def test_last_month_closes_by_itself_once_its_grace_has_passed(omni: Omni) -> None:
    from omni.billing_close import AutoClose

    ((_, key),) = await setup(omni)
    await use(omni, key, tokens=10)
    await omni.settle()
    this_month = BillingPeriod.of(datetime.now(UTC))
    closer = AutoClose(omni.platform)
    grace = timedelta(seconds=omni.platform.settings.billing_close_grace_seconds)
    omni.platform.clock = lambda: this_month.end + grace - timedelta(seconds=1)
    assert await closer.once() is None  # still in its grace
    assert await invoices(omni, key) == []

    omni.platform.clock = lambda: this_month.end + grace
    closing = asyncio.create_task(closer.once())
    while not closing.done():
        await omni.settle()
        await asyncio.sleep(0.01)
    closed = closing.result()
    assert closed is not None and closed.period == this_month.text
    await omni.settle()
    (invoice,) = await invoices(omni, key)
    assert invoice["period"] == this_month.text
    assert await closer.once() is None  # closed: nothing more


async def test_a_month_is_priced_by_the_plan_and_version_in_force_at_its_end(tmp_path: Path) -> None:
    """A price revised, or a tenant moved to another plan, after a month ended (on the 1st, before the
    close) leaves that month as it was: it was priced by whatever was in force at the close."""
    from tests.e2e.conftest import embedded_settings, served

    last_month = BillingPeriod.of(datetime.now(UTC)).before()
    settings = embedded_settings(tmp_path / "data", acceptance_window_seconds=120 * 86400)
    async with served(settings) as omni:
        # The plan and the tenants as they were in the middle of last month: the event store's clock.
        with pytest.MonkeyPatch.context() as then:
            then.setattr("eventsourcing.domain.datetime_now_with_tzinfo", lambda: last_month.start + timedelta(days=10))
            (stayed_id, stayed), (moved_id, moved) = await setup(omni, tenants=2)
        late_in_it = last_month.end - timedelta(hours=1)
        for key in (stayed, moved):
            events = [cloud_event(uuid.uuid4().hex, data={"tokens": 3000}, time=late_in_it)]
            assert (await omni.send(key, events)).status_code == 202
        # Now, after the month ended: pro's tokens cost five times as much, and one tenant moves to
        # a plan that charges a dollar a token.
        dearer = {
            **PLAN,
            "prices": [{**PLAN["prices"][0], "tiers": [{"up_to": 1000, "unit_price": "0"}, {"unit_price": "0.01"}]}],
        }
        assert (await omni.client.put("/v1/plans/pro", json=dearer, headers=omni.auth(ADMIN))).status_code == 200
        steep = {"currency": "USD", "prices": [{"meter": "tokens", "model": "per_unit", "unit_price": "1.00"}]}
        assert (await omni.client.put("/v1/plans/steep", json=steep, headers=omni.auth(ADMIN))).status_code == 201
        assert (
            await omni.client.put(f"/v1/tenants/{moved_id}/plan", json={"plan": "steep"}, headers=omni.auth(ADMIN))
        ).status_code == 204
        await omni.settle()
        closed = await close(omni, last_month.text)
        assert closed.status_code == 200, closed.text
        for key in (stayed, moved):
            (invoice,) = await invoices(omni, key)
            # pro v1: the fee, and 2,000 tokens past the free 1,000 at 0.002: 10.00 + 4.00.
            assert (invoice["plan"], invoice["total"]) == ({"slug": "pro", "version": 1}, 1400), invoice
        # This month is priced as things stand now.
        draft = await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(stayed))
        assert (draft.json()["plan"], draft.json()["total"]) == ({"slug": "pro", "version": 2}, 1000), draft.text
        draft = await omni.client.get("/v1/invoices/upcoming", headers=omni.auth(moved))
        assert draft.status_code == 404, draft.text  # steep charges no fee, and there is no usage yet
    assert stayed_id != moved_id
