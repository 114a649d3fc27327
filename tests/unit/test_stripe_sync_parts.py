"""The Stripe sync's pure parts: what is sent for an invoice (keys from our ids only), which errors
are outages, the backoff, what a webhook event says, and the settings that turn it on."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from api.routes.webhooks import InvoiceNotice, read_event
from omni.settings import Settings
from streams.stripe_sync import (
    BACKOFF_MAX,
    backoff,
    customer_call,
    finalize_key,
    invoice_call,
    is_outage,
    item_calls,
    stripe_client,
)

DOCUMENT: dict[str, Any] = {
    "id": "0b7c-inv",
    "tenant_id": "t-1",
    "number": "ABCDEF12-0003",
    "period": "2026-11",
    "currency": "JPY",
    "total": 1234,
    "lines": [
        {"type": "fee", "plan": "pro", "amount": 1000},
        {"type": "usage", "meter": "tokens", "model": "graduated", "quantity": 2501, "billable": 2501, "amount": 234},
        {"type": "adjustment", "meter": "tokens", "period": "2026-10", "quantity": 5, "amount": 0},
    ],
}


def test_keys_derive_from_our_ids_alone_so_a_retry_sends_the_same_ones() -> None:
    first = [invoice_call(DOCUMENT, "cus_A"), *item_calls(DOCUMENT, "cus_A", "in_A")]
    # Another Stripe invoice id (stripe-mock invents one per answer): the keys stay.
    again = [invoice_call(DOCUMENT, "cus_A"), *item_calls(DOCUMENT, "cus_A", "in_B")]
    assert (
        [c.key for c in first]
        == [c.key for c in again]
        == [
            "omni-0b7c-inv-invoice",
            "omni-0b7c-inv-item-1",
            "omni-0b7c-inv-item-2",
            "omni-0b7c-inv-item-3",
        ]
    )
    assert finalize_key("0b7c-inv") == "omni-0b7c-inv-finalize"
    assert customer_call("t-1", "acme") == customer_call("t-1", "acme")
    assert customer_call("t-1", None).key == "omni-customer-t-1"


def test_the_invoice_and_its_items_carry_our_ids_currency_and_minor_units() -> None:
    invoice = invoice_call(DOCUMENT, "cus_A").params
    assert (invoice["customer"], invoice["currency"], invoice["metadata"]["omni_invoice_id"]) == ("cus_A", "jpy", "0b7c-inv")
    assert invoice["pending_invoice_items_behavior"] == "exclude"
    items = [c.params for c in item_calls(DOCUMENT, "cus_A", "in_A")]
    assert [(i["amount"], i["currency"], i["invoice"]) for i in items] == [
        (1000, "jpy", "in_A"),
        (234, "jpy", "in_A"),
        (0, "jpy", "in_A"),
    ]
    assert sum(i["amount"] for i in items) == DOCUMENT["total"]
    assert [i["description"] for i in items] == [
        "Plan fee (pro)",
        "tokens: 2501 (2501 billable, graduated)",
        "tokens for 2026-10: 5 more after it was invoiced",
    ]
    assert customer_call("t-1", "acme").params == {"metadata": {"omni_tenant_id": "t-1"}, "name": "acme"}


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (stripe.APIConnectionError("refused"), True),
        (stripe.RateLimitError("slow down", http_status=429), True),
        (stripe.APIError("busy", http_status=503), True),
        (stripe.IdempotencyError("in flight", http_status=409), True),
        (stripe.APIError("no status"), True),
        (stripe.InvalidRequestError("bad currency", "currency", http_status=400), False),
        (stripe.AuthenticationError("bad key", http_status=401), False),
    ],
)
def test_outages_are_retried_and_refusals_are_not(error: stripe.StripeError, outage: bool) -> None:
    assert is_outage(error) is outage


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert [backoff(n) for n in (0, 1, 2, 3, 4)] == [1.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff(50) == BACKOFF_MAX


def test_a_webhook_event_names_our_invoice_only_through_an_invoices_metadata() -> None:
    def event(found: Any) -> dict[str, Any]:
        return {"id": "evt_1", "type": "invoice.paid", "data": {"object": found}}

    ours = {"object": "invoice", "metadata": {"omni_invoice_id": "inv-1"}, "attempt_count": 2}
    assert read_event(event(ours)) == InvoiceNotice("evt_1", "invoice.paid", "inv-1", 2)
    for stranger in (
        {"object": "invoice", "metadata": {}},
        {"object": "invoice"},
        {"object": "customer", "metadata": {"omni_invoice_id": "inv-1"}},
        {"object": "invoice", "metadata": {"omni_invoice_id": ""}},
        "not an object",
    ):
        assert read_event(event(stranger)).invoice_id is None, stranger
    assert read_event({}) == InvoiceNotice("", "", None, None)


def test_the_sync_is_off_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMNI_STRIPE_API_KEY", "OMNI_STRIPE_API_BASE", "OMNI_STRIPE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.stripe_api_key, settings.stripe_api_base, settings.stripe_webhook_secret) == (None, None, None)
    with pytest.raises(ValueError, match="OMNI_STRIPE_API_KEY"):
        stripe_client(settings)
    monkeypatch.setenv("OMNI_STRIPE_API_KEY", "sk_test_1")
    monkeypatch.setenv("OMNI_STRIPE_API_BASE", "http://127.0.0.1:12111")
    assert stripe_client(Settings()) is not None
