"""What POST /v1/webhooks/stripe answers Stripe (api/routes/webhooks.py)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Outcome(StrEnum):
    RECORDED = "recorded"  # the event moved our state (an invoice paid, a payment failure noted)
    UNCHANGED = "unchanged"  # recorded before: a redelivery
    IGNORED = "ignored"  # a type we do not act on, or no invoice of ours
    REFUSED = "refused"  # it contradicts our state (paid after void): audited, not applied


class WebhookReceipt(BaseModel):
    event_id: str
    type: str
    outcome: Outcome
    invoice_id: str | None = Field(default=None, description="Our invoice the event named (metadata `omni_invoice_id`)")
    detail: str | None = None
