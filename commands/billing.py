"""Billing: closing a period into invoices, and each invoice's life after (paid, void, uncollectible).

A tenant's BillingAccount aggregate holds its invoice and credit-note sequences and what each
period was billed: the event store's optimistic concurrency makes the numbers gapless under
concurrent closes (a lost race is retried, never numbered twice). A BillingPeriod aggregate per
month records its close once: closing it again is a Conflict.

Closing reads the usage from the views at one cut (stores.billing.usage_cut, at the edge) and hands
it here; the invoices themselves come from the pure `projections.invoices.bill`. Everything a close
decides (the period's record, every tenant's invoice and credit note, their audit entries) is saved
in one transaction: a crash leaves either all of it or none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from commands.errors import Conflict, Invalid, NotFound
from commands.ids import billing_account_aggregate_id, billing_period_aggregate_id
from projections.invoices import (
    CREDIT_NOTE,
    Billed,
    BillingPeriod,
    PricedPlan,
    Statement,
    Unbillable,
    bill,
    void_credit_note,
    void_forgiven,
    void_refusal,
)
from projections.invoices import (
    credit_note_id as credit_note_id_of,
)
from projections.invoices import (
    invoice_id as invoice_id_of,
)
from schemas.envelope import format_time

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane

PLATFORM = "_platform"
FINALIZED, PAID, VOID, UNCOLLECTIBLE = "finalized", "paid", "void", "uncollectible"
CLOSE_ATTEMPTS = 5
CLOSE_CHUNK = 250  # tenants per event-store transaction of a close


class BillingAccount(Aggregate):
    """One tenant's invoices: numbering, what each period was billed, and each invoice's status."""

    @staticmethod
    def create_id(tenant_id: str) -> UUID:
        return billing_account_aggregate_id(tenant_id)

    @event("Opened")
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.invoices_issued = 0
        self.credit_notes_issued = 0
        self.billed: dict[str, dict[str, Any]] = {}  # period -> Billed.to_json()
        self.statuses: dict[str, str] = {}  # invoice id -> status
        self.currency: str | None = None  # its first invoice's: a tenant is billed in one currency

    @event("InvoiceFinalized")
    def finalize(self, tenant_id: str, invoice: dict[str, Any], billed: dict[str, dict[str, Any]]) -> None:
        """The event carries the whole invoice: the log alone says what was billed, and how."""
        if invoice["kind"] == CREDIT_NOTE:
            self.credit_notes_issued += 1
        else:
            self.invoices_issued += 1
        self.statuses[invoice["id"]] = FINALIZED
        self.billed.update(billed)
        self.currency = invoice["currency"]

    @event("StatusChanged")
    def change_status(self, tenant_id: str, invoice_id: str, status: str, reason: str | None, source: str) -> None:
        """`source`: who moved it (`admin`, `stripe`)."""
        self.statuses[invoice_id] = status

    @event("PaymentFailed")
    def payment_failed(self, tenant_id: str, invoice_id: str, reason: str | None, source: str) -> None:
        """A payment attempt failed; the invoice stays finalized (Stripe retries by its own schedule)."""

    @event("BilledCorrected")
    def rebill(self, tenant_id: str, billed: dict[str, dict[str, Any]]) -> None:
        """What periods were billed changed without an invoice: usage of a billed period moved at no
        cost (inside an allowance), or a void forgave what its invoice charged (projections.invoices.void_forgiven)."""
        self.billed.update(billed)


class ClosedPeriod(Aggregate):
    """A billing month, closed once. `held`: the tenants the close could not invoice (an amount past
    what an invoice holds, projections.invoices.Unbillable), each with why; closing the month again
    invoices those that can be now (`invoice_held`). Closes recorded before holds existed held none."""

    @staticmethod
    def create_id(period: str, closed_at: str, cut: dict[str, Any], invoices: int, held: dict[str, str] | None = None) -> UUID:
        return billing_period_aggregate_id(period)

    @event("Closed")
    def __init__(
        self, period: str, closed_at: str, cut: dict[str, Any], invoices: int, held: dict[str, str] | None = None
    ) -> None:
        self.period = period
        self.closed_at = closed_at
        self.invoices = invoices
        self.held: dict[str, str] = dict(held or {})

    @event("HeldInvoiced")
    def invoice_held(self, period: str, invoiced: list[str], held: dict[str, str], invoices: int, at: str) -> None:
        """A close of the month again invoiced the `invoiced` tenants it had held; `held`: those still
        held; `invoices`: the documents issued for the month in all since its close."""
        self.held = dict(held)
        self.invoices = invoices


@dataclass(frozen=True, slots=True)
class UsageCut:
    """What the views held at one instant, for closing one period (stores.billing.usage_cut).

    `usage`: tenant -> meter -> total in the period. `earlier`: tenant -> earlier closed period ->
    meter -> total now. `offsets`: each priced meter's checkpoints at the cut (topic/partition ->
    next offset): the log prefix the invoices bill, so anyone can recompute them."""

    period: BillingPeriod
    tenants: Mapping[str, str]  # tenant -> its plan's slug now
    plans: Mapping[str, PricedPlan]  # the plans that charge, at the versions in force at the period's end
    usage: Mapping[str, Mapping[str, Decimal]]
    earlier: Mapping[str, Mapping[str, Mapping[str, Decimal]]]
    offsets: Mapping[str, Mapping[str, int]]
    plan_at: Callable[[str, int], PricedPlan | None] = field(compare=False)
    # The tenants created after the period ended: no fee or minimum is due from them for it.
    joined_after: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Closed:
    period: str
    closed_at: str
    invoices: list[dict[str, Any]]  # invoices and credit notes, in tenant order
    held: dict[str, str] = field(default_factory=dict)  # tenant -> why it is not invoiced (Unbillable)


class BillingCommands:
    """The billing commands of the ControlPlane application (mixed into it)."""

    def close_period(self: ControlPlane, ctx: CommandContext, cut: UsageCut, closed_at: str) -> Closed:
        """Finalize every tenant's invoice for the period, once. Conflict if it was closed before and
        holds no tenant back.

        Tenants are billed and saved CLOSE_CHUNK at a time (an event-store transaction of tens of
        thousands of events stalls PostgreSQL's client), each chunk with its audit entries; the
        period's own record is saved with the last. A close cut short (a crash, an outage) is
        resumed by closing again: tenants already invoiced for the period keep their invoice, and
        their usage after that first cut is billed next month as an adjustment, never twice. A chunk
        that loses a race with another period's close over an account is redone on the accounts as
        they are now, so the numbers stay gapless.

        A tenant whose invoice would pass what an invoice holds (Unbillable: usage far beyond any
        real bill) is held, never the others: the period closes without it, its record names it
        with the reason (and an audit entry each), and closing the period again invoices the held
        tenants whose usage or prices were corrected since (`_invoice_held`)."""
        period = cut.period.text
        resource = f"billing/periods/{period}"
        with self._rejections_audited(ctx, "billing.period.close", resource):
            closed_before = self._closed_period(period)
            if closed_before is not None:
                if not closed_before.held:
                    raise Conflict(f"billing period {period} is already closed")
                return self._invoice_held(ctx, cut, closed_before, closed_at)
            held_earlier = self.held_months(cut)
            tenants = sorted(cut.tenants)
            documents: list[dict[str, Any]] = []
            held: dict[str, str] = {}
            earlier_documents = 0
            for start in range(0, max(len(tenants), 1), CLOSE_CHUNK):
                chunk = tenants[start : start + CLOSE_CHUNK]
                last = start + CLOSE_CHUNK >= len(tenants)
                for attempt in range(CLOSE_ATTEMPTS):
                    accounts, issued, audits, before, chunk_held = self._bill_chunk(ctx, cut, chunk, closed_at, held_earlier)
                    extra: list[Any] = []
                    if last:
                        count = len(documents) + len(issued) + earlier_documents + before
                        all_held = {**held, **chunk_held}
                        closed = ClosedPeriod(
                            period=period, closed_at=closed_at, cut=dict(cut.offsets), invoices=count, held=all_held
                        )
                        extra = [closed, self._audit(ctx, "billing.period.close", resource, PLATFORM)]
                        extra += [self._audit(ctx, "invoice.hold", resource, t, reason=why) for t, why in all_held.items()]
                    if not accounts and not extra:
                        break
                    try:
                        self.save(*extra, *accounts, *audits)
                        break
                    except IntegrityError as race:
                        if last and self._closed_period(period) is not None:
                            raise Conflict(f"billing period {period} is already closed") from race
                        if attempt == CLOSE_ATTEMPTS - 1:
                            raise Conflict(f"billing period {period} could not be closed for concurrent changes; retry") from race
                documents += issued
                held.update(chunk_held)
                earlier_documents += before
        return Closed(period, closed_at, documents, held)

    def _invoice_held(self: ControlPlane, ctx: CommandContext, cut: UsageCut, closed: ClosedPeriod, at: str) -> Closed:
        """Close a closed period again: invoice the tenants it held that can be now. Invalid
        (`unbillable-amount`) when none can, naming each with its reason: nothing changed."""
        period = cut.period.text
        resource = f"billing/periods/{period}"
        held_earlier = self.held_months(cut)
        for attempt in range(CLOSE_ATTEMPTS):
            waiting = sorted(t for t in closed.held if t in cut.tenants)
            accounts, issued, audits, before, still = self._bill_chunk(ctx, cut, waiting, at, held_earlier)
            still.update({t: why for t, why in closed.held.items() if t not in cut.tenants})  # deleted since: held on
            invoiced = sorted(set(closed.held) - set(still))
            if not invoiced:
                reasons = [{"location": "path.period", "reason": why} for _, why in sorted(still.items())]
                raise Invalid(
                    f"billing period {period} is closed; none of the {len(still)} tenants it holds can be invoiced yet",
                    reasons,
                    title="Unbillable amount",
                    kind="unbillable-amount",
                )
            closed.invoice_held(
                period=period, invoiced=invoiced, held=still, invoices=closed.invoices + len(issued) + before, at=at
            )
            audit = self._audit(
                ctx, "billing.period.close", resource, PLATFORM, reason=f"invoiced held tenants: {', '.join(invoiced)}"
            )
            try:
                self.save(closed, audit, *accounts, *audits)
                return Closed(period, at, issued, still)
            except IntegrityError as race:
                if attempt == CLOSE_ATTEMPTS - 1:
                    raise Conflict(f"billing period {period} could not be closed for concurrent changes; retry") from race
                found = self._closed_period(period)
                if found is None or not found.held:
                    raise Conflict(f"billing period {period} is already closed") from race
                closed = found
        raise AssertionError("unreachable")  # pragma: no cover

    def plan_at(self: ControlPlane, tenant_id: str, moment: datetime) -> str | None:
        """The plan the tenant was on just before `moment` (its creation's, or its last assignment's
        before then), from its events in the event store; for a tenant created later, the plan it was
        created on; None for no such tenant."""
        found: str | None = None
        for domain_event in self.repository.event_store.get(UUID(tenant_id)):
            plan = getattr(domain_event, "plan", None)  # Created and PlanAssigned carry it
            if not isinstance(plan, str):
                continue
            if domain_event.timestamp >= moment:
                return found or plan
            found = plan
        return found

    def held_months(self: ControlPlane, cut: UsageCut) -> dict[str, frozenset[str]]:
        """Of the closed periods before the cut's, the tenants each holds (not invoiced): their usage
        of it is billed by closing it again, never as another month's adjustment."""
        found: dict[str, frozenset[str]] = {}
        for period in sorted({p for months in cut.earlier.values() for p in months}):
            closed = self._closed_period(period)
            if closed is not None and closed.held:
                found[period] = frozenset(closed.held)
        return found

    def _bill_chunk(
        self: ControlPlane,
        ctx: CommandContext,
        cut: UsageCut,
        tenants: list[str],
        closed_at: str,
        held_earlier: Mapping[str, frozenset[str]],
    ) -> tuple[list[BillingAccount], list[dict[str, Any]], list[Any], int, dict[str, str]]:
        """The accounts changed, the documents issued and their audit entries for these tenants, how
        many documents an earlier, interrupted close of this period issued to them, and the tenants
        held (Unbillable: nothing of theirs is issued), with why."""
        period = cut.period.text
        accounts: list[BillingAccount] = []
        documents: list[dict[str, Any]] = []
        audits = []
        held: dict[str, str] = {}
        before = 0
        for tenant_id in tenants:
            # The month is priced by the plan the tenant was on at its end, at the version in force
            # then (a price or a plan changed on the 1st leaves the month before as it was); a tenant
            # created after the month: the plan it was created on.
            plan = cut.plans.get(self.plan_at(tenant_id, cut.period.end) or cut.tenants[tenant_id])
            usage = cut.usage.get(tenant_id, {})
            earlier = without_held(cut.earlier.get(tenant_id, {}), tenant_id, held_earlier)
            existed = tenant_id not in cut.joined_after
            if not usage and not earlier and (plan is None or not existed or not plan.charges_without_usage):
                continue
            account = self._billing_account(tenant_id)
            done = [
                d
                for d in (invoice_id_of(tenant_id, period), credit_note_id_of(tenant_id, period))
                if account and d in account.statuses
            ]
            if done:
                before += len(done)  # invoiced by a close of this period that was cut short
                continue
            try:
                statement = bill(
                    tenant_id=tenant_id,
                    period=cut.period,
                    plan=plan,
                    usage=usage,
                    earlier=earlier,
                    billed={p: Billed.from_json(b) for p, b in account.billed.items()} if account else {},
                    plan_at=cut.plan_at,
                    next_invoice=(account.invoices_issued if account else 0) + 1,
                    next_credit_note=(account.credit_notes_issued if account else 0) + 1,
                    issued_at=closed_at,
                    existed=existed,
                )
            except Unbillable as too_large:
                held[tenant_id] = str(too_large)
                continue
            account = account or BillingAccount(tenant_id=tenant_id)
            issued, changed = _issue(account, statement)
            if not changed:
                continue
            accounts.append(account)
            documents += issued
            for document in issued:
                action, target = f"{document['kind']}.finalize", f"invoices/{document['id']}"
                audits.append(self._audit(ctx, action, target, tenant_id, reason=_why(document)))
        return accounts, documents, audits, before, held

    def billed_so_far(self: ControlPlane, tenant_id: str) -> tuple[dict[str, Billed], int, int]:
        """What the tenant was billed per period, and its next invoice and credit-note numbers (the
        upcoming invoice reads them)."""
        account = self._billing_account(tenant_id)
        if account is None:
            return {}, 1, 1
        billed = {p: Billed.from_json(b) for p, b in account.billed.items()}
        return billed, account.invoices_issued + 1, account.credit_notes_issued + 1

    def billing_currency(self: ControlPlane, tenant_id: str) -> str | None:
        """The currency the tenant has been invoiced in; None before its first invoice."""
        account = self._billing_account(tenant_id)
        return None if account is None else account.currency

    def is_closed(self: ControlPlane, period: str) -> bool:
        return self._closed_period(period) is not None

    def is_closed_holding_none(self: ControlPlane, period: str) -> bool:
        """Closed, with every tenant invoiced: a close of it again has nothing to do (Conflict)."""
        closed = self._closed_period(period)
        return closed is not None and not closed.held

    def _billing_account(self: ControlPlane, tenant_id: str) -> BillingAccount | None:
        try:
            account: object = self.repository.get(billing_account_aggregate_id(tenant_id))
        except AggregateNotFoundError:
            return None
        return account if isinstance(account, BillingAccount) else None

    def _closed_period(self: ControlPlane, period: str) -> ClosedPeriod | None:
        try:
            closed: object = self.repository.get(billing_period_aggregate_id(period))
        except AggregateNotFoundError:
            return None
        return closed if isinstance(closed, ClosedPeriod) else None

    def set_invoice_status(
        self: ControlPlane,
        ctx: CommandContext,
        document: Mapping[str, Any],
        status: str,
        *,
        reason: str | None,
        source: str,
        at: str,
    ) -> dict[str, Any] | None:
        """Move a finalized invoice to `status` (MOVES says which may follow which; Conflict otherwise).
        Voiding issues a credit note for its total, returned. Setting the status it has changes nothing."""
        invoice_id, tenant_id = str(document["id"]), str(document["tenant_id"])
        resource = f"invoices/{invoice_id}"
        action = f"invoice.{status}"
        with self._rejections_audited(ctx, action, resource):
            account = self._billing_account(tenant_id)
            if account is None or invoice_id not in account.statuses:
                raise NotFound(f"invoice {invoice_id} not found")
            if document["kind"] != "invoice":
                raise Conflict(
                    f"{invoice_id} is a credit note: it is final as issued, only invoices are paid, voided or uncollectible"
                )
            now = account.statuses[invoice_id]
            if now == status:
                return None
            if status not in MOVES[now]:
                raise Conflict(f"invoice {invoice_id} is {now}; it cannot become {status}")
            if status == VOID:
                billed_now = {p: Billed.from_json(b) for p, b in account.billed.items()}
                if (refusal := void_refusal(document, billed_now)) is not None:
                    raise Conflict(f"invoice {invoice_id} cannot be voided: {refusal}")
            account.change_status(tenant_id=tenant_id, invoice_id=invoice_id, status=status, reason=reason, source=source)
            credit_note = None
            if status == VOID:
                credit_note = void_credit_note(document, account.credit_notes_issued + 1, reason, at)
                account.finalize(tenant_id=tenant_id, invoice=credit_note, billed={})
                billed = {p: Billed.from_json(b) for p, b in account.billed.items()}
                forgiven = void_forgiven(document, billed)
                if forgiven:
                    account.rebill(tenant_id=tenant_id, billed={p: b.to_json() for p, b in forgiven.items()})
            try:
                self.save(account, self._audit(ctx, action, resource, tenant_id, reason=reason))
            except IntegrityError as race:
                raise Conflict(f"invoice {invoice_id} changed concurrently; retry") from race
        return credit_note


# Which status may follow which: a paid or void invoice is settled for good.
MOVES: dict[str, frozenset[str]] = {
    FINALIZED: frozenset({PAID, VOID, UNCOLLECTIBLE}),
    UNCOLLECTIBLE: frozenset({PAID, VOID}),
    PAID: frozenset(),
    VOID: frozenset(),
}


def _issue(account: BillingAccount, statement: Statement) -> tuple[list[dict[str, Any]], bool]:
    """Record the statement's documents on the account, the billed state with the first; with no
    document, a change of billed state alone (a late correction that costs nothing) is recorded."""
    issued = [d for d in (statement.invoice, statement.credit_note) if d is not None]
    billed = {p: b.to_json() for p, b in statement.billed.items()}
    for index, document in enumerate(issued):
        account.finalize(tenant_id=account.tenant_id, invoice=document, billed=billed if index == 0 else {})
    if not issued and billed and any(account.billed.get(p) != b for p, b in billed.items()):
        account.rebill(tenant_id=account.tenant_id, billed=billed)
        return issued, True
    return issued, bool(issued)


def without_held(
    earlier: Mapping[str, Mapping[str, Decimal]], tenant_id: str, held: Mapping[str, frozenset[str]]
) -> Mapping[str, Mapping[str, Decimal]]:
    """The tenant's earlier periods less those that hold it: a held month is billed by closing it
    again, never as an adjustment of a later one."""
    if not any(tenant_id in tenants for tenants in held.values()):
        return earlier
    return {p: totals for p, totals in earlier.items() if tenant_id not in held.get(p, frozenset())}


def _why(document: Mapping[str, Any]) -> str:
    adjusted = sorted({line["period"] for line in document["lines"] if line.get("type") == "adjustment"})
    because = f"closing {document['period']}"
    if adjusted:
        because += f"; usage of {', '.join(adjusted)} changed after it was invoiced"
    return because


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The log's type, tenant and data for a billing event; None for any other event."""
    match type(domain_event).__qualname__:
        case "BillingAccount.Opened":
            return "omni.billing.account_opened", domain_event.tenant_id, {"tenant_id": domain_event.tenant_id}
        case "BillingAccount.InvoiceFinalized":
            invoice = domain_event.invoice
            kind = "omni.credit_note.finalized" if invoice["kind"] == CREDIT_NOTE else "omni.invoice.finalized"
            return kind, domain_event.tenant_id, {"invoice": invoice, "billed": domain_event.billed}
        case "BillingAccount.StatusChanged":
            data = {
                "invoice_id": domain_event.invoice_id,
                "status": domain_event.status,
                "reason": domain_event.reason,
                "source": domain_event.source,
                "at": format_time(domain_event.timestamp),
            }
            return "omni.invoice.status_changed", domain_event.tenant_id, data
        case "BillingAccount.PaymentFailed":
            data = {"invoice_id": domain_event.invoice_id, "reason": domain_event.reason, "source": domain_event.source}
            return "omni.invoice.payment_failed", domain_event.tenant_id, data
        case "BillingAccount.BilledCorrected":
            return "omni.billing.billed_corrected", domain_event.tenant_id, {"billed": domain_event.billed}
        case "ClosedPeriod.Closed":
            data = {
                "period": domain_event.period,
                "closed_at": domain_event.closed_at,
                "cut": domain_event.cut,
                "invoices": domain_event.invoices,
            }
            held = getattr(domain_event, "held", None)  # absent from closes recorded before holds existed
            if held:
                data["held"] = held
            return "omni.billing.period_closed", PLATFORM, data
        case "ClosedPeriod.HeldInvoiced":
            data = {
                "period": domain_event.period,
                "invoiced": domain_event.invoiced,
                "held": domain_event.held,
                "invoices": domain_event.invoices,
                "at": domain_event.at,
            }
            return "omni.billing.held_invoiced", PLATFORM, data
    return None
