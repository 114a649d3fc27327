"""The Stripe commands on the control plane: each record once, the first one standing, each with its
audit entry, and what the outbox publishes for them."""

from __future__ import annotations

from typing import Any

import pytest

from commands.billing import BillingAccount
from commands.control_plane import AuditEntry, CommandContext, ControlPlane, describe
from commands.errors import Conflict, NotFound

SYNC = CommandContext(key_id="omni-stripe-sync")
INVOICE = {"id": "inv-1", "kind": "invoice", "tenant_id": "t-1", "currency": "USD"}


@pytest.fixture
def app() -> ControlPlane:
    control = ControlPlane(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    account = BillingAccount(tenant_id="t-1")
    account.finalize(tenant_id="t-1", invoice=INVOICE, billed={})
    control.save(account)
    return control


INVOICE_2 = "5d0e7f5a-9a51-5c7e-8a11-2b7cbb0e6f02"  # a uuid5, as invoices' ids are (a refusal keeps no other shape)


def stored(app: ControlPlane) -> list[Any]:
    return [app.mapper.to_domain_event(n) for n in app.recorder.select_notifications(1, 1000)]


def test_a_tenants_customer_and_an_invoices_push_are_recorded_once_the_first_standing(app: ControlPlane) -> None:
    assert app.stripe_customer("t-1") is None
    assert app.link_stripe_customer(SYNC, "t-1", "cus_first") == "cus_first"
    assert app.link_stripe_customer(SYNC, "t-1", "cus_second") == "cus_first"  # a racing second push
    assert app.stripe_customer("t-1") == "cus_first"
    assert app.record_stripe_invoice(SYNC, "t-1", "inv-1", "in_1", "cus_first") is True
    assert app.record_stripe_invoice(SYNC, "t-1", "inv-1", "in_2", "cus_first") is False
    assert app.stripe_invoice("inv-1") == "in_1"
    published = [describe(e) for e in stored(app) if not isinstance(e, AuditEntry.Recorded)]
    assert [(kind, tenant) for kind, tenant, _ in published[-2:]] == [
        ("omni.stripe.customer_linked", "t-1"),
        ("omni.stripe.invoice_pushed", "t-1"),
    ]
    assert {k: v for k, v in published[-1][2].items() if k != "at"} == {
        "invoice_id": "inv-1",
        "stripe_invoice_id": "in_1",
        "customer_id": "cus_first",
    }
    actions = [e.action for e in stored(app) if isinstance(e, AuditEntry.Recorded)]
    assert actions == ["stripe.customer.link", "invoice.stripe_push"]


def test_a_payment_failure_is_recorded_once_per_stripe_event(app: ControlPlane) -> None:
    assert app.record_stripe_payment_failure(SYNC, "evt_1", "t-1", "inv-1", "declined") is True
    assert app.record_stripe_payment_failure(SYNC, "evt_1", "t-1", "inv-1", "declined") is False
    assert app.record_stripe_payment_failure(SYNC, "evt_2", "t-1", "inv-1", "declined again") is True
    failures = [describe(e) for e in stored(app) if type(e).__qualname__ == "BillingAccount.PaymentFailed"]
    assert [data["reason"] for _, _, data in failures] == ["declined", "declined again"]
    with pytest.raises(NotFound):
        app.record_stripe_payment_failure(SYNC, "evt_3", "t-1", "inv-unknown", None)


def test_a_payment_marks_paid_once_and_a_voided_invoice_stays_void(app: ControlPlane) -> None:
    assert app.record_stripe_payment(SYNC, "evt_1", INVOICE, "2026-12-01T00:00:00.000000Z") is True
    assert app.record_stripe_payment(SYNC, "evt_1", INVOICE, "2026-12-01T00:00:00.000000Z") is False
    moves = [describe(e)[2] for e in stored(app) if type(e).__qualname__ == "BillingAccount.StatusChanged"]
    assert [(m["status"], m["source"], m["reason"]) for m in moves] == [("paid", "stripe", "Stripe event evt_1")]

    other = {
        "id": INVOICE_2,
        "kind": "invoice",
        "tenant_id": "t-1",
        "currency": "USD",
        "number": "X-0002",
        "total": 5,
        "lines": [],
    }
    account = app._billing_account("t-1")
    assert account is not None
    account.finalize(tenant_id="t-1", invoice=other, billed={})
    account.change_status(tenant_id="t-1", invoice_id=INVOICE_2, status="void", reason="ops", source="admin")
    app.save(account)
    with pytest.raises(Conflict):
        app.record_stripe_payment(SYNC, "evt_2", other, "2026-12-01T00:00:00.000000Z")
    refused = [e for e in stored(app) if isinstance(e, AuditEntry.Recorded) and e.outcome == "rejected"]
    assert [(e.action, e.resource) for e in refused] == [("invoice.paid", f"invoices/{INVOICE_2}")]
