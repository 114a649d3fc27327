"""The Stripe sync: every finalized invoice, pushed once to Stripe with the official client.

For each invoice (not credit note) still finalized and not yet pushed (stores.stripe.unpushed):

1. the tenant's Stripe customer, created once (metadata `omni_tenant_id`) and recorded
   (commands.stripe_sync.link_stripe_customer);
2. a draft Stripe invoice (metadata `omni_invoice_id`), one invoice item per line of ours (integer
   minor units already, currency in lower case), then finalize;
3. the Stripe invoice id recorded (record_stripe_invoice), which ends the invoice's push.

4. later, what an admin does to a pushed invoice reaches Stripe's copy (mirror_once): void,
   uncollectible, or paid outside Stripe (`paid_out_of_band`); Stripe's own payments, which its
   webhook reported, are not sent back.

Every request carries an idempotency key derived from our ids (`omni-customer-<tenant>`,
`omni-<invoice>-invoice`, `-item-<n>`, `-finalize`): a push redone after a crash between Stripe's
answer and our record sends the very same requests, and Stripe answers them as the first time
(within its 24 hours of idempotency). A push of an invoice recorded as pushed sends nothing.

Stripe outages (connection errors, 429, 409 on a key in flight, 5xx) stop the round; it is retried
with backoff, and the invoice stays finalized and pending meanwhile. Any other refusal by Stripe
(logged) puts that invoice aside with a backoff of its own, and the round goes on past it: however
many invoices Stripe refuses, they never take the places of the others in a round.
One process leads (as the outbox relay does); the others stand by.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import stripe

from commands.control_plane import CommandContext, ControlPlane
from omni import failpoints
from omni.settings import Settings
from stores import stripe as stripe_store
from stores import views
from stores.database import Database, StoreUnavailable
from streams.pausing import pause

log = logging.getLogger(__name__)

LEADER = "stripe-sync"
SYNC = CommandContext(key_id="omni-stripe-sync")  # the actor of pushes in the audit trail
IDLE_SECONDS = 1.0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 300.0
NETWORK_RETRIES = 2  # the client's own quick retries (same idempotency key), before the round gives up
PER_ROUND = 50


# What to send: pure, from our documents ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StripeCall:
    """One POST to Stripe: its parameters and its idempotency key."""

    key: str
    params: dict[str, Any]


def customer_call(tenant_id: str, name: str | None) -> StripeCall:
    params: dict[str, Any] = {"metadata": {"omni_tenant_id": tenant_id}}
    if name:
        params["name"] = name
    return StripeCall(f"omni-customer-{tenant_id}", params)


def invoice_call(document: Mapping[str, Any], customer_id: str) -> StripeCall:
    invoice_id = str(document["id"])
    return StripeCall(
        f"omni-{invoice_id}-invoice",
        {
            "customer": customer_id,
            "currency": str(document["currency"]).lower(),
            "description": f"{document['number']} ({document['period']})",
            "pending_invoice_items_behavior": "exclude",  # only the items below, never stray pending ones
            "metadata": {"omni_invoice_id": invoice_id, "omni_number": str(document["number"])},
        },
    )


def item_calls(document: Mapping[str, Any], customer_id: str, stripe_invoice_id: str) -> list[StripeCall]:
    """One invoice item per line, numbered from 1 in the document's order."""
    invoice_id = str(document["id"])
    currency = str(document["currency"]).lower()
    return [
        StripeCall(
            f"omni-{invoice_id}-item-{number}",
            {
                "customer": customer_id,
                "invoice": stripe_invoice_id,
                "currency": currency,
                "amount": int(line["amount"]),
                "description": line_description(line),
                "metadata": {"omni_invoice_id": invoice_id, "omni_line": str(number)},
            },
        )
        for number, line in enumerate(document["lines"], start=1)
    ]


def finalize_key(invoice_id: str) -> str:
    return f"omni-{invoice_id}-finalize"


def line_description(line: Mapping[str, Any]) -> str:
    match line.get("type"):
        case "fee":
            return f"Plan fee ({line['plan']})"
        case "usage":
            return f"{line['meter']}: {line['quantity']} ({line['billable']} billable, {line['model']})"
        case "adjustment":
            return f"{line['meter']} for {line['period']}: {line['quantity']} more after it was invoiced"
    return str(line.get("type", "line"))


def is_outage(error: stripe.StripeError) -> bool:
    """Worth retrying the same requests later: Stripe unreachable, overloaded, or still busy with the key."""
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    status = error.http_status
    return status is None or status == 409 or status >= 500


def backoff(failures: int) -> float:
    """The pause after `failures` failed rounds in a row (1 s, 2 s, 4 s, ... up to 5 minutes)."""
    return min(BACKOFF_FIRST * 2 ** max(failures - 1, 0), BACKOFF_MAX)


# Sending it: I/O --------------------------------------------------------------------------------


class StripeUnavailable(Exception):
    """Stripe could not be reached or answered with an outage; the round stops, retried later."""


@dataclass(frozen=True, slots=True)
class Round:
    pushed: int  # invoices pushed and recorded now
    refused: int  # invoices Stripe refused (each retried after a backoff of its own)


def stripe_client(settings: Settings, *, network_retries: int = NETWORK_RETRIES) -> stripe.StripeClient:
    if not settings.stripe_api_key:
        raise ValueError("the Stripe sync needs OMNI_STRIPE_API_KEY")
    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(settings.stripe_api_key, base_addresses=base, max_network_retries=network_retries)


class StripeSync:
    def __init__(
        self,
        control: ControlPlane,
        db: Database,
        client: stripe.StripeClient,
        wake: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.control = control
        self.db = db
        self.client = client
        self.wake = wake  # the outbox relay's: publish what was just recorded
        self.clock = clock
        # Invoices Stripe refused: invoice id -> (refusals in a row, when to try it again, by `clock`).
        self.refused: dict[str, tuple[int, float]] = {}

    def push_once(self, limit: int = PER_ROUND) -> Round:
        """Push the next unpushed invoices, `limit` at most, past those Stripe refused whose backoff
        has not run out (blocking). StripeUnavailable on an outage, after recording the invoices
        pushed before it."""
        now = self.clock()
        attempted = pushed = refused = 0
        after: tuple[str, str] | None = None
        while attempted < limit:
            with self.db.transaction() as tx:
                page = stripe_store.unpushed(tx, PER_ROUND, after)
            if not page:
                break
            after = (str(page[-1]["issued_at"]), str(page[-1]["id"]))
            for document in page:
                invoice_id = str(document["id"])
                before = self.refused.get(invoice_id)
                if before is not None and before[1] > now:
                    continue  # refused lately: its own backoff runs
                if attempted == limit:
                    break
                attempted += 1
                try:
                    pushed += self.push(document)
                except stripe.StripeError as error:
                    if is_outage(error):
                        raise StripeUnavailable(f"{type(error).__name__}: {error}") from error
                    refused += 1
                    times = (before[0] if before is not None else 0) + 1
                    self.refused[invoice_id] = (times, now + backoff(times))
                    log.error("Stripe refused invoice %s; retrying in %.0fs: %s", invoice_id, backoff(times), error)
                else:
                    self.refused.pop(invoice_id, None)
        return Round(pushed, refused)

    def mirror_once(self, limit: int = PER_ROUND) -> int:
        """Tell Stripe of what an admin did to pushed invoices (void, uncollectible, paid out of band),
        each with an idempotency key from our invoice id and the status; returns how many. A refusal
        is logged and retried next round; an outage raises StripeUnavailable."""
        with self.db.transaction() as tx:
            pending = stripe_store.to_mirror(tx, limit)
        done = 0
        for invoice_id, tenant_id, stripe_invoice_id, status in pending:
            options: Any = {"idempotency_key": f"omni-{invoice_id}-{status}"}
            invoices = self.client.v1.invoices
            try:
                if status == "void":
                    invoices.void_invoice(stripe_invoice_id, options=options)
                elif status == "uncollectible":
                    invoices.mark_uncollectible(stripe_invoice_id, options=options)
                else:
                    invoices.pay(stripe_invoice_id, params={"paid_out_of_band": True}, options=options)
            except stripe.StripeError as error:
                if is_outage(error):
                    raise StripeUnavailable(f"{type(error).__name__}: {error}") from error
                log.error("Stripe refused to mark invoice %s %s; retrying next round: %s", invoice_id, status, error)
                continue
            done += self.control.record_stripe_status(SYNC, tenant_id, invoice_id, status)
        return done

    def push(self, document: Mapping[str, Any]) -> bool:
        """Push one invoice; False (nothing sent) if it was recorded as pushed before."""
        invoice_id, tenant_id = str(document["id"]), str(document["tenant_id"])
        if self.control.stripe_invoice(invoice_id) is not None:
            return False
        customer_id = self.control.stripe_customer(tenant_id) or self._create_customer(tenant_id)
        call = invoice_call(document, customer_id)
        invoices = self.client.v1.invoices
        created = invoices.create(params=call.params, options={"idempotency_key": call.key})
        for item in item_calls(document, customer_id, created.id):
            self.client.v1.invoice_items.create(params=item.params, options={"idempotency_key": item.key})
        invoices.finalize_invoice(created.id, options={"idempotency_key": finalize_key(invoice_id)})
        failpoints.hit(failpoints.STRIPE_BEFORE_RECORD)  # Stripe holds the invoice, our record does not yet
        return self.control.record_stripe_invoice(SYNC, tenant_id, invoice_id, created.id, customer_id)

    def _create_customer(self, tenant_id: str) -> str:
        with self.db.transaction() as tx:
            tenant = views.tenant(tx, tenant_id)
        call = customer_call(tenant_id, tenant[1] if tenant is not None else None)
        customer = self.client.v1.customers.create(params=call.params, options={"idempotency_key": call.key})
        failpoints.hit(failpoints.STRIPE_BEFORE_RECORD)  # Stripe holds the customer, our record does not yet
        return self.control.link_stripe_customer(SYNC, tenant_id, customer.id)

    async def run(self, stop: asyncio.Event, idle: float = IDLE_SECONDS) -> None:
        """Push until stopped, backing off while Stripe is away or refuses."""
        leadership = self.db.leadership(LEADER)
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if await asyncio.to_thread(leadership.hold):
                        done = await asyncio.to_thread(self.push_once)
                        mirrored = await asyncio.to_thread(self.mirror_once)
                        if (done.pushed or mirrored) and self.wake is not None:
                            self.wake()
                        failures = 0  # refused invoices wait out backoffs of their own (push_once)
                except StripeUnavailable as outage:
                    failures += 1
                    log.warning("Stripe unavailable (%s); retrying in %.0fs", outage, backoff(failures))
                except StoreUnavailable as outage:
                    failures += 1
                    log.warning("Stripe sync waiting for the stores: %s", outage)
                except Exception:
                    failures += 1
                    log.exception("Stripe sync failed; retrying in %.0fs", backoff(failures))
                await pause(stop, backoff(failures) if failures else idle)
        finally:
            leadership.release()


def from_settings(settings: Settings, control: ControlPlane, db: Database, wake: Callable[[], None] | None) -> StripeSync:
    return StripeSync(control, db, stripe_client(settings), wake)
