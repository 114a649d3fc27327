"""The Stripe view's changes, folded from control events: each tenant's Stripe customer and each
invoice's Stripe invoice (commands.stripe_sync records them; the catalog projector folds them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.envelope import Envelope


@dataclass(frozen=True, slots=True)
class CustomerLinked:
    tenant_id: str
    customer_id: str
    at: str


@dataclass(frozen=True, slots=True)
class InvoicePushed:
    invoice_id: str
    tenant_id: str
    stripe_invoice_id: str
    customer_id: str
    at: str


@dataclass(frozen=True, slots=True)
class StatusMirrored:
    invoice_id: str
    status: str


StripeChange = CustomerLinked | InvoicePushed | StatusMirrored


def changes(event: Envelope) -> list[StripeChange]:
    """What one control event changes in the Stripe view. Other types change nothing."""
    data: dict[str, Any] = event.data or {}
    match event.type:
        case "omni.stripe.customer_linked":
            return [CustomerLinked(data["tenant_id"], data["customer_id"], data["at"])]
        case "omni.stripe.invoice_pushed":
            return [
                InvoicePushed(data["invoice_id"], event.tenant_id, data["stripe_invoice_id"], data["customer_id"], data["at"])
            ]
        case "omni.stripe.invoice_status_mirrored":
            return [StatusMirrored(data["invoice_id"], data["status"])]
    return []
