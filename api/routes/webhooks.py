"""POST /v1/webhooks/stripe: Stripe's events about the invoices we pushed (streams/stripe_sync.py).

No API key: the `Stripe-Signature` header is the authentication (api/edge.py lets the path through).
It is verified with `stripe.Webhook.construct_event` against OMNI_STRIPE_WEBHOOK_SECRET, and a bad or
stale one (older than the client's 5 minutes) is refused with 400 before anything is recorded.

- `invoice.paid`: our invoice (metadata `omni_invoice_id`) becomes paid, source `stripe`;
- `invoice.payment_failed`: the failure is recorded on the invoice, once per Stripe event;
- any other type, or an invoice that is not ours: 200, ignored.

A redelivered event changes nothing. An event that contradicts our state (paid after we voided) is
audited as refused and answered 200: Stripe's retries could not change the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request

from api.deps import PlatformDep, trace_id
from api.problems import Problem
from api.relaying import run_command
from api.roles import RoleFirstRoute
from commands.control_plane import CommandContext
from commands.errors import Conflict, NotFound
from projections.invoices import INVOICE
from schemas.envelope import format_time
from schemas.stripe import Outcome, WebhookReceipt
from stores import billing as billing_store

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=RoleFirstRoute)

PAID, PAYMENT_FAILED = "invoice.paid", "invoice.payment_failed"

BODY = {
    "required": True,
    "description": "A Stripe event (`object: event`) exactly as Stripe sends it: its bytes are what the signature signs.",
    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
}


@dataclass(frozen=True, slots=True)
class InvoiceNotice:
    """What a Stripe event says about one of our invoices."""

    event_id: str
    type: str
    invoice_id: str | None  # ours, from the Stripe invoice's metadata
    attempt: int | None


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def read_event(event: Mapping[str, Any]) -> InvoiceNotice:
    """The fields we act on, from a verified Stripe event (pure)."""
    data = event.get("data")
    found = data.get("object") if isinstance(data, Mapping) else None
    found = found if isinstance(found, Mapping) else {}
    metadata = found.get("metadata") or {}
    invoice_id = metadata.get("omni_invoice_id") if found.get("object") == "invoice" and isinstance(metadata, Mapping) else None
    attempt = found.get("attempt_count")
    return InvoiceNotice(
        event_id=str(event.get("id", "")),
        type=str(event.get("type", "")),
        invoice_id=invoice_id if isinstance(invoice_id, str) and invoice_id else None,
        attempt=attempt if type(attempt) is int else None,
    )


@router.post(
    "/stripe",
    response_model=WebhookReceipt,
    responses={400: {}, 404: {}},
    openapi_extra={"requestBody": BODY},
)
async def stripe_webhook(
    request: Request,
    platform: PlatformDep,
    stripe_signature: Annotated[
        str | None, Header(description="Stripe's signature of the body (`t=...,v1=...`); 400 when missing or wrong")
    ] = None,
) -> WebhookReceipt:
    """Stripe's events about our invoices: `invoice.paid` marks one paid, `invoice.payment_failed`
    records the failure; other types are ignored. Authenticated by the signature alone (no API key);
    400 when it does not verify, and nothing is recorded. 404 when webhooks are not configured."""
    secret = platform.settings.stripe_webhook_secret
    if not secret:
        raise Problem(404, "Not found", "Stripe webhooks are not configured (OMNI_STRIPE_WEBHOOK_SECRET).", kind="not-found")
    payload = await request.body()
    # Imported here, by the first webhook: Stripe's library costs every API process about 0.15 s of
    # CPU at start, and most deployments never configure these webhooks.
    import stripe

    try:
        # Stripe's own check, recency included (construct_event's tolerance: 300 s).
        stripe.WebhookSignature.verify_header(payload, stripe_signature, secret, stripe.Webhook.DEFAULT_TOLERANCE)
    except stripe.SignatureVerificationError as bad:
        raise Problem(400, "Bad signature", f"The Stripe-Signature does not verify: {bad}", kind="bad-signature") from bad
    # Signed, then read here: Stripe's builder took JSON that is no object for one and failed (a 500).
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict) or not _text(event.get("id")) or not _text(event.get("type")):
        raise Problem(
            400,
            "Malformed event",
            "The body is not a Stripe event: a JSON object with its `id` and `type`.",
            kind="malformed-event",
        )
    notice = read_event(event)
    receipt = WebhookReceipt(event_id=notice.event_id, type=notice.type, outcome=Outcome.IGNORED, invoice_id=notice.invoice_id)
    if notice.type not in (PAID, PAYMENT_FAILED) or notice.invoice_id is None:
        return receipt
    with platform.db.transaction() as tx:
        row = billing_store.invoice(tx, notice.invoice_id)
    if row is None or row[0]["kind"] != INVOICE:
        return receipt.model_copy(update={"detail": "no such invoice here"})
    document = row[0]
    ctx = CommandContext(
        key_id="stripe-webhook",
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        trace_id=trace_id(request),
    )
    control = platform.control
    try:
        if notice.type == PAID:
            at = format_time(platform.clock())
            changed = await run_command(platform, control.record_stripe_payment, ctx, notice.event_id, document, at)
        else:
            attempt = f" (attempt {notice.attempt})" if notice.attempt is not None else ""
            reason = f"Stripe event {notice.event_id}: payment failed{attempt}"
            changed = await run_command(
                platform,
                control.record_stripe_payment_failure,
                ctx,
                notice.event_id,
                document["tenant_id"],
                document["id"],
                reason,
            )
    except Conflict as refused:
        return receipt.model_copy(update={"outcome": Outcome.REFUSED, "detail": str(refused)})
    except NotFound as missing:
        return receipt.model_copy(update={"detail": str(missing)})
    return receipt.model_copy(update={"outcome": Outcome.RECORDED if changed else Outcome.UNCHANGED})
