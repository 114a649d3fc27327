"""Stripe sync decisions: which Stripe customer is a tenant's, which Stripe invoice is ours, which
Stripe webhook events were recorded.

Each is an aggregate whose id derives from our own id (the tenant, the invoice, Stripe's event id),
so it is recorded once: a second recording (a retry after a crash, two processes racing) is refused
by the event store and the first one stands. Each is saved with its audit entry in one transaction,
and relayed by the outbox like every control-plane event (streams.outbox, `describe` below).

The pushing itself (HTTP calls to Stripe, at the edge) is streams.stripe_sync; the webhook is
api/routes/webhooks.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from commands.billing import PAID
from commands.errors import Conflict, NotFound
from commands.ids import OMNI_NAMESPACE
from schemas.envelope import format_time

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane

PAYMENT_FAILED = "invoice.payment_failed"


def stripe_customer_aggregate_id(tenant_id: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"stripe-customer:{tenant_id}")


def stripe_invoice_aggregate_id(invoice_id: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"stripe-invoice:{invoice_id}")


def stripe_event_aggregate_id(event_id: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"stripe-event:{event_id}")


class StripeCustomer(Aggregate):
    """A tenant's customer in Stripe, created once."""

    @staticmethod
    def create_id(tenant_id: str, customer_id: str) -> UUID:
        return stripe_customer_aggregate_id(tenant_id)

    @event("Linked")
    def __init__(self, tenant_id: str, customer_id: str) -> None:
        self.tenant_id = tenant_id
        self.customer_id = customer_id


class StripeInvoice(Aggregate):
    """One of our invoices, pushed to Stripe and finalized there."""

    @staticmethod
    def create_id(invoice_id: str, tenant_id: str, stripe_invoice_id: str, customer_id: str) -> UUID:
        return stripe_invoice_aggregate_id(invoice_id)

    @event("Pushed")
    def __init__(self, invoice_id: str, tenant_id: str, stripe_invoice_id: str, customer_id: str) -> None:
        self.invoice_id = invoice_id
        self.tenant_id = tenant_id
        self.stripe_invoice_id = stripe_invoice_id
        self.mirrored: str | None = None  # the last status of ours Stripe was told of

    @event("StatusMirrored")
    def mirror(self, invoice_id: str, tenant_id: str, status: str) -> None:
        """Stripe's copy now says what ours does: void, uncollectible, or paid out of band."""
        self.mirrored = status


class StripeWebhookEvent(Aggregate):
    """A Stripe event whose effect was recorded: a redelivery of it records nothing more."""

    @staticmethod
    def create_id(event_id: str, kind: str, tenant_id: str, invoice_id: str) -> UUID:
        return stripe_event_aggregate_id(event_id)

    @event("Received")
    def __init__(self, event_id: str, kind: str, tenant_id: str, invoice_id: str) -> None:
        self.event_id = event_id
        self.kind = kind


class StripeCommands:
    """The Stripe commands of the ControlPlane application (mixed into it)."""

    def stripe_customer(self: ControlPlane, tenant_id: str) -> str | None:
        """The tenant's Stripe customer id, once recorded."""
        found = self._stripe_aggregate(stripe_customer_aggregate_id(tenant_id))
        return found.customer_id if isinstance(found, StripeCustomer) else None

    def stripe_invoice(self: ControlPlane, invoice_id: str) -> str | None:
        """The Stripe invoice id of one of our invoices, once pushed."""
        found = self._stripe_aggregate(stripe_invoice_aggregate_id(invoice_id))
        return found.stripe_invoice_id if isinstance(found, StripeInvoice) else None

    def link_stripe_customer(self: ControlPlane, ctx: CommandContext, tenant_id: str, customer_id: str) -> str:
        """Record the tenant's Stripe customer; the one recorded first stands, and is returned."""
        try:
            self.save(
                StripeCustomer(tenant_id=tenant_id, customer_id=customer_id),
                self._audit(ctx, "stripe.customer.link", f"tenants/{tenant_id}", tenant_id, reason=customer_id),
            )
        except IntegrityError as taken:
            recorded = self.stripe_customer(tenant_id)
            if recorded is None:
                raise Conflict(f"the Stripe customer of tenant {tenant_id} changed concurrently; retry") from taken
            return recorded
        return customer_id

    def record_stripe_invoice(
        self: ControlPlane, ctx: CommandContext, tenant_id: str, invoice_id: str, stripe_invoice_id: str, customer_id: str
    ) -> bool:
        """Record that the invoice was pushed and finalized in Stripe; False if it was recorded before."""
        pushed = StripeInvoice(
            invoice_id=invoice_id, tenant_id=tenant_id, stripe_invoice_id=stripe_invoice_id, customer_id=customer_id
        )
        try:
            self.save(
                pushed, self._audit(ctx, "invoice.stripe_push", f"invoices/{invoice_id}", tenant_id, reason=stripe_invoice_id)
            )
        except IntegrityError:
            return False
        return True

    def record_stripe_status(self: ControlPlane, ctx: CommandContext, tenant_id: str, invoice_id: str, status: str) -> bool:
        """Record that Stripe's copy of the invoice was moved to `status`; False if it was before."""
        found = self._stripe_aggregate(stripe_invoice_aggregate_id(invoice_id))
        if not isinstance(found, StripeInvoice):
            raise NotFound(f"invoice {invoice_id} was not pushed to Stripe")
        if getattr(found, "mirrored", None) == status:
            return False
        found.mirror(invoice_id=invoice_id, tenant_id=tenant_id, status=status)
        try:
            self.save(found, self._audit(ctx, f"invoice.stripe_{status}", f"invoices/{invoice_id}", tenant_id))
        except IntegrityError:
            return False  # another process recorded it first
        return True

    def record_stripe_payment(
        self: ControlPlane, ctx: CommandContext, event_id: str, document: Mapping[str, Any], at: str
    ) -> bool:
        """Stripe's `invoice.paid` event `event_id`: the invoice becomes paid (source `stripe`); False
        when it was paid already (a redelivery changes nothing). Conflict (audited) when it is void."""
        account = self._billing_account(str(document["tenant_id"]))
        if account is not None and account.statuses.get(str(document["id"])) == PAID:
            return False
        self.set_invoice_status(ctx, document, PAID, reason=f"Stripe event {event_id}", source="stripe", at=at)
        return True

    def record_stripe_payment_failure(
        self: ControlPlane, ctx: CommandContext, event_id: str, tenant_id: str, invoice_id: str, reason: str | None
    ) -> bool:
        """Stripe's `invoice.payment_failed` event `event_id`: the failure is recorded on the invoice
        with the event's receipt, in one save; False (nothing recorded) when the event was before."""
        resource = f"invoices/{invoice_id}"
        with self._rejections_audited(ctx, PAYMENT_FAILED, resource):
            if self._stripe_aggregate(stripe_event_aggregate_id(event_id)) is not None:
                return False
            account = self._billing_account(tenant_id)
            if account is None or invoice_id not in account.statuses:
                raise NotFound(f"invoice {invoice_id} not found")
            received = StripeWebhookEvent(event_id=event_id, kind=PAYMENT_FAILED, tenant_id=tenant_id, invoice_id=invoice_id)
            account.payment_failed(tenant_id=tenant_id, invoice_id=invoice_id, reason=reason, source="stripe")
            try:
                self.save(received, account, self._audit(ctx, PAYMENT_FAILED, resource, tenant_id, reason=reason))
            except IntegrityError as race:
                if self._stripe_aggregate(stripe_event_aggregate_id(event_id)) is not None:
                    return False  # the same event, delivered twice at once: recorded by the other
                raise Conflict(f"invoice {invoice_id} changed concurrently; retry") from race
        return True

    def _stripe_aggregate(self: ControlPlane, aggregate_id: UUID) -> object | None:
        try:
            found: object = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return found


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The log's type, tenant and data for a Stripe event; None for any other event."""
    match type(domain_event).__qualname__:
        case "StripeCustomer.Linked":
            data = {
                "tenant_id": domain_event.tenant_id,
                "customer_id": domain_event.customer_id,
                "at": format_time(domain_event.timestamp),
            }
            return "omni.stripe.customer_linked", domain_event.tenant_id, data
        case "StripeInvoice.Pushed":
            data = {
                "invoice_id": domain_event.invoice_id,
                "stripe_invoice_id": domain_event.stripe_invoice_id,
                "customer_id": domain_event.customer_id,
                "at": format_time(domain_event.timestamp),
            }
            return "omni.stripe.invoice_pushed", domain_event.tenant_id, data
        case "StripeInvoice.StatusMirrored":
            data = {
                "invoice_id": domain_event.invoice_id,
                "status": domain_event.status,
                "at": format_time(domain_event.timestamp),
            }
            return "omni.stripe.invoice_status_mirrored", domain_event.tenant_id, data
        case "StripeWebhookEvent.Received":
            data = {"event_id": domain_event.event_id, "type": domain_event.kind, "invoice_id": domain_event.invoice_id}
            return "omni.stripe.webhook_received", domain_event.tenant_id, data
    return None
