"""Invoices as a pure function of a period's usage, the plan that prices it, and what was billed.

Closing a billing period (commands.billing) hands `bill` one tenant's usage totals for the period
(the meters' day buckets summed over the month, read from the views at one consistent cut), its
current totals for the closed periods before it, and what it was billed for those. `bill` answers
with the invoice (and a credit note, if late corrections lowered an earlier period) as canonical
documents: the same inputs give the same bytes, so re-closing or rebuilding the views cannot change
an invoice, and anyone holding the log can recompute it.

Late usage (an event for a closed period, inside the acceptance window) never touches the invoice
that period got: the next close finds the period's total moved past what was billed and bills the
difference as an adjustment line naming the period, priced with the plan version that priced the
period; a negative difference goes on a credit note.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import orjson

from projections.meter_state import EXACT
from projections.pricing import ZERO, Charge, charge, to_minor
from schemas.billing import Billing, MeterPrice
from schemas.currencies import MINOR_UNITS
from schemas.envelope import Envelope
from schemas.quantities import quantity_json

PERIOD_TEXT = re.compile(r"((?:19|2\d)\d{2})-(0[1-9]|1[0-2])")  # 1900-01 to 2999-12
PERIOD_PATTERN = f"^{PERIOD_TEXT.pattern}$"
INVOICE = "invoice"
CREDIT_NOTE = "credit_note"
# Invoices' and credit notes' ids: uuid5 under this namespace, of what they are for.
INVOICE_NAMESPACE = uuid5(NAMESPACE_URL, "https://omni.dev/invoices")
# The largest amount a document may hold, in minor units: the views keep amounts as 64-bit integers
# (BIGINT), and the log's encoder writes no larger integer.
MAX_AMOUNT = 2**63 - 1


class Unbillable(ValueError):
    """A document whose amounts pass MAX_AMOUNT (usage far beyond any real bill): it is not issued."""


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    """A calendar month, UTC, by event time: [start, end)."""

    text: str  # "2026-11"
    start: datetime
    end: datetime

    @classmethod
    def parse(cls, text: str) -> BillingPeriod | None:
        found = PERIOD_TEXT.fullmatch(text)
        if found is None:
            return None
        year, month = int(found[1]), int(found[2])
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return cls(text, start, end)

    @classmethod
    def of(cls, moment: datetime) -> BillingPeriod:
        period = cls.parse(f"{moment.astimezone(UTC):%Y-%m}")
        assert period is not None
        return period

    def before(self) -> BillingPeriod:
        year, month = self.start.year, self.start.month
        found = BillingPeriod.parse(f"{year - (month == 1):04d}-{(month - 2) % 12 + 1:02d}")
        assert found is not None
        return found


@dataclass(frozen=True, slots=True)
class PricedPlan:
    """A plan version that charges: its slug and version name it on every invoice it priced."""

    slug: str
    version: int
    billing: Billing

    @property
    def currency(self) -> str:
        assert self.billing.currency is not None
        return self.billing.currency

    @property
    def charges_without_usage(self) -> bool:
        """A fee, or a minimum on some meter: the plan bills even a period with no usage."""
        fee = self.billing.fee is not None and Decimal(self.billing.fee) > 0
        return fee or any(p.minimum is not None and Decimal(p.minimum) > 0 for p in self.billing.prices)

    def price_of(self, meter: str) -> MeterPrice | None:
        return next((p for p in self.billing.prices if p.meter == meter), None)


@dataclass(frozen=True, slots=True)
class Billed:
    """What one tenant was billed for one period: the plan version that priced it and the quantity
    of each meter billed so far (the invoice's, then each adjustment's). `minimums` False: the
    tenant did not exist in the period, so its prices' minimums did not apply (nor do they to the
    period's adjustments). `forgiven`: the quantities of each meter that voided invoices charged
    for (`void_forgiven`): never billed again, so a later close prices the period's usage less them."""

    plan: str
    version: int
    quantities: Mapping[str, Decimal]
    minimums: bool = True
    forgiven: Mapping[str, Decimal] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "plan": self.plan,
            "version": self.version,
            "quantities": {m: str(q) for m, q in sorted(self.quantities.items())},
        }
        if not self.minimums:
            stored["minimums"] = False  # absent (as in records before it existed): they applied
        if self.forgiven:
            stored["forgiven"] = {m: str(q) for m, q in sorted(self.forgiven.items())}  # absent: nothing voided
        return stored

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> Billed:
        quantities = {m: Decimal(q) for m, q in stored["quantities"].items()}
        forgiven = {m: Decimal(q) for m, q in stored.get("forgiven", {}).items()}
        return cls(stored["plan"], int(stored["version"]), quantities, bool(stored.get("minimums", True)), forgiven)


@dataclass(frozen=True, slots=True)
class Statement:
    """One tenant's outcome of closing one period."""

    invoice: dict[str, Any] | None
    credit_note: dict[str, Any] | None
    billed: dict[str, Billed] = field(default_factory=dict)  # the periods whose billed state changed


def invoice_id(tenant_id: str, period: str) -> str:
    return str(uuid5(INVOICE_NAMESPACE, f"{INVOICE}/{tenant_id}/{period}"))


def credit_note_id(tenant_id: str, reason: str) -> str:
    """`reason`: the period whose close issued it, or `void/<invoice id>`."""
    return str(uuid5(INVOICE_NAMESPACE, f"{CREDIT_NOTE}/{tenant_id}/{reason}"))


def document_number(tenant_id: str, kind: str, sequence: int) -> str:
    """Gapless per tenant and kind: `3F2A9C1B-0001` for invoices, `3F2A9C1B-CN-0001` for credit notes."""
    prefix = tenant_id.replace("-", "")[:8].upper()
    return f"{prefix}-{sequence:04d}" if kind == INVOICE else f"{prefix}-CN-{sequence:04d}"


def canonical(document: Mapping[str, Any]) -> bytes:
    """The document's canonical bytes: JSON with sorted keys and no spaces (every value in it is a
    string, an integer, a boolean or null, so the encoding is unique)."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(document)).hexdigest()


def usage_line(found: Charge) -> dict[str, Any]:
    line: dict[str, Any] = {
        "type": "usage",
        "meter": found.meter,
        "model": found.model.value,
        "quantity": quantity_json(found.quantity),
        "included": quantity_json(found.included),
        "billable": quantity_json(found.billable),
        "amount": found.amount,
    }
    if found.tiers:
        line["tiers"] = [
            {
                "tier": t.index + 1,
                "up_to": None if t.up_to is None else quantity_json(t.up_to),
                "quantity": quantity_json(t.quantity),
                "unit_price": t.unit_price,
                "flat_price": t.flat_price,
                "amount": _decimal_text(t.amount),
            }
            for t in found.tiers
        ]
    if found.packages is not None:
        line["packages"] = found.packages
        line["package_price"] = found.unit_price
    elif found.unit_price is not None:
        line["unit_price"] = found.unit_price
    if found.minimum_applied:
        line["minimum_applied"] = True
    return line


def _decimal_text(amount: Decimal) -> str:
    """Exact, without exponent or trailing zeros: 3.002, 0, 15. (A tier's amount is never negative:
    its quantity is positive and its prices are not negative, so there is no -0 to write as 0.)"""
    return format(amount.normalize(), "f")


def _fee_line(plan: PricedPlan) -> dict[str, Any] | None:
    fee = plan.billing.fee
    if fee is None or Decimal(fee) == 0:
        return None
    return {"type": "fee", "plan": plan.slug, "amount": to_minor(Decimal(fee), MINOR_UNITS[plan.currency])}


def bill(
    *,
    tenant_id: str,
    period: BillingPeriod,
    plan: PricedPlan | None,
    usage: Mapping[str, Decimal],
    earlier: Mapping[str, Mapping[str, Decimal]],
    billed: Mapping[str, Billed],
    plan_at: Callable[[str, int], PricedPlan | None],
    next_invoice: int,
    next_credit_note: int,
    issued_at: str,
    existed: bool = True,
) -> Statement:
    """Close `period` for one tenant.

    `usage`: the tenant's total of each meter in the period. `earlier`: its current totals in the
    closed periods before (period text -> meter -> total). `billed`: what it was billed for those.
    `plan_at(slug, version)`: an earlier plan version. Sequences are the next unused numbers.
    `existed` False: the tenant was created after the period ended, so the plan's standing charges
    (its fee, its prices' minimums) are not due for it; usage in the period, by event time, is.
    Exact in EXACT's 120 digits, as the meters sum (Python's default context keeps 28)."""
    with localcontext(EXACT):
        updates: dict[str, Billed] = {}
        lines: list[dict[str, Any]] = []
        if plan is not None:
            fee = _fee_line(plan) if existed else None
            if fee is not None:
                lines.append(fee)
            digits = MINOR_UNITS[plan.currency]
            for price in sorted(plan.billing.prices, key=lambda p: p.meter):
                found = charge(price, usage.get(price.meter, ZERO), digits, minimum=existed)
                if found.quantity != 0 or found.amount != 0:
                    lines.append(usage_line(found))
            priced = {m: q for m, q in usage.items() if plan.price_of(m) is not None}
            updates[period.text] = Billed(plan.slug, plan.version, priced, minimums=existed)
        debits, credits, currency = _adjustments(plan, earlier, billed, plan_at, updates)
        charged = bool(lines) or any(line["amount"] > 0 for line in debits)
        invoice = None
        if charged and currency is not None:
            lines += debits
            invoice = _document(
                INVOICE, invoice_id(tenant_id, period.text), document_number(tenant_id, INVOICE, next_invoice),
                tenant_id, period, currency, plan, lines, issued_at,
            )  # fmt: skip
        credit_note = None
        if credits and currency is not None:
            credit_note = _document(
                CREDIT_NOTE, credit_note_id(tenant_id, period.text), document_number(tenant_id, CREDIT_NOTE, next_credit_note),
                tenant_id, period, currency, plan, credits, issued_at,
            )  # fmt: skip
            credit_note["reason"] = "usage corrected after its period was invoiced"
        if invoice is None:
            updates.pop(period.text, None)  # nothing billed for the period: nothing to remember
        return Statement(invoice, credit_note, updates)


def _adjustments(
    plan: PricedPlan | None,
    earlier: Mapping[str, Mapping[str, Decimal]],
    billed: Mapping[str, Billed],
    plan_at: Callable[[str, int], PricedPlan | None],
    updates: dict[str, Billed],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """Lines for the earlier periods whose totals moved since they were billed: debits (amount zero or
    more, on the invoice) and credits (on a credit note, as positive amounts)."""
    debits: list[dict[str, Any]] = []
    credits: list[dict[str, Any]] = []
    currency = plan.currency if plan is not None else None
    for text in sorted(earlier):
        totals = earlier[text]
        before = billed.get(text)
        priced_by = plan_at(before.plan, before.version) if before is not None else plan
        if priced_by is None:
            continue
        quantities = dict(before.quantities) if before is not None else {}
        forgiven = before.forgiven if before is not None else {}
        moved = False
        for meter in sorted({*quantities, *(p.meter for p in priced_by.billing.prices)}):
            price = priced_by.price_of(meter)
            now, then = _billable(totals.get(meter, ZERO), forgiven.get(meter)), quantities.get(meter, ZERO)
            if price is None or now == then:
                continue
            if currency not in (None, priced_by.currency):
                # A tenant keeps its currency (commands.plans refuses a plan in another one).
                raise ValueError(f"{text} was billed in {priced_by.currency}, this invoice is in {currency}")
            digits = MINOR_UNITS[priced_by.currency]
            minimum = before is None or before.minimums
            # Priced on the month's whole usage: what voids forgave still fills the tiers (and met the
            # minimum) below what is billed now, so a void forgives what its invoice charged, no more.
            base = forgiven.get(meter, ZERO)
            difference = (
                charge(price, base + now, digits, minimum=minimum).amount
                - charge(price, base + then, digits, minimum=minimum).amount
            )
            line = {
                "type": "adjustment",
                "meter": meter,
                "period": text,
                "quantity": quantity_json(now - then),
                "billed_quantity": quantity_json(then),
                "corrected_quantity": quantity_json(totals.get(meter, ZERO)),
                "amount": abs(difference),
            }
            if meter in forgiven:  # corrected less forgiven less billed is the line's quantity
                line["forgiven_quantity"] = quantity_json(forgiven[meter])
            (credits if difference < 0 else debits).append(line)
            quantities[meter] = now
            moved = True
            currency = currency or priced_by.currency
        if moved:
            minimums = before is None or before.minimums
            updates[text] = Billed(priced_by.slug, priced_by.version, quantities, minimums=minimums, forgiven=forgiven)
    return debits, credits, currency


def _billable(usage: Decimal, forgiven: Decimal | None) -> Decimal:
    """A meter's usage in a period that is still to be billed: less what voided invoices forgave,
    never below nothing (a correction downwards cannot credit what was never paid)."""
    return usage if forgiven is None else max(usage - forgiven, ZERO)


def _charged_usage(invoice: Mapping[str, Any]) -> list[tuple[str, str, Decimal, Decimal]]:
    """Each (period, meter) an invoice charged usage for: the quantity it added (above nothing; a
    line that took usage back, or a month whose total was below nothing, charged none) and the
    billed quantity it left the period at."""
    found = []
    for line in invoice["lines"]:
        if line["type"] == "usage":
            period, left_at = str(invoice["period"]), Decimal(str(line["quantity"]))
        elif line["type"] == "adjustment":
            period = str(line["period"])
            left_at = Decimal(str(line["corrected_quantity"])) - Decimal(str(line.get("forgiven_quantity", 0)))
        else:
            continue
        quantity = Decimal(str(line["quantity"]))
        if quantity > 0:
            found.append((period, str(line["meter"]), quantity, left_at))
    return found


def void_refusal(invoice: Mapping[str, Any], billed: Mapping[str, Billed]) -> str | None:
    """Why voiding `invoice` cannot give back its whole total, or None. Its void credits the total,
    which is right while the usage it charged is still billed; once a month it charged was
    corrected downwards (a credit note gave some back, or a fold moved it down at no cost), part of
    it is credited already, and the void would credit it twice."""
    with localcontext(EXACT):
        charged = _charged_usage(invoice)
    for period, meter, _, left_at in charged:
        now = billed.get(period)
        if now is not None and now.quantities.get(meter, ZERO) < left_at:
            return (
                f"{meter} of {period} was corrected downwards after invoice {invoice['number']} billed it "
                f"({quantity_json(left_at)} billed, {quantity_json(now.quantities.get(meter, ZERO))} now): "
                "voiding it would give back what a credit note already did"
            )
    return None


def void_forgiven(invoice: Mapping[str, Any], billed: Mapping[str, Billed]) -> dict[str, Billed]:
    """The billed state of each period a voided invoice charged usage for (its own, and each its
    adjustments named), with what it charged taken back and forgiven: the void credited it all, so
    no later close bills it again, nor credits it again when the usage is corrected downwards. Usage
    reported for those periods later, past what was forgiven, is billed as any late usage is.
    Only what the invoice added is forgiven (`_charged_usage`); `void_refusal` says when a void
    cannot be made."""
    changed: dict[str, Billed] = {}
    plan = invoice.get("plan") or {}
    with localcontext(EXACT):
        charged = _charged_usage(invoice)
    for period, meter, quantity, _ in charged:
        before = changed.get(period) or billed.get(period) or Billed(str(plan.get("slug", "")), int(plan.get("version", 0)), {})
        quantities, forgiven = dict(before.quantities), dict(before.forgiven)
        quantities[meter] = EXACT.subtract(quantities.get(meter, ZERO), quantity)
        forgiven[meter] = EXACT.add(forgiven.get(meter, ZERO), quantity)
        changed[period] = Billed(before.plan, before.version, quantities, minimums=before.minimums, forgiven=forgiven)
    return changed


def _document(
    kind: str,
    document_id: str,
    number: str,
    tenant_id: str,
    period: BillingPeriod,
    currency: str,
    plan: PricedPlan | None,
    lines: list[dict[str, Any]],
    issued_at: str,
) -> dict[str, Any]:
    subtotal = sum(int(line["amount"]) for line in lines)
    if subtotal > MAX_AMOUNT:  # every line's amount is zero or more: the subtotal bounds them all
        raise Unbillable(
            f"tenant {tenant_id}'s {kind.replace('_', ' ')} for {period.text} would total {subtotal} minor units of "
            f"{currency}, more than an invoice holds ({MAX_AMOUNT}); correct the usage"
        )
    return {
        "id": document_id,
        "kind": kind,
        "number": number,
        "tenant_id": tenant_id,
        "period": period.text,
        "period_start": f"{period.start:%Y-%m-%dT%H:%M:%SZ}",
        "period_end": f"{period.end:%Y-%m-%dT%H:%M:%SZ}",
        "currency": currency,
        "minor_units": MINOR_UNITS[currency],
        "status": "finalized",
        "plan": None if plan is None else {"slug": plan.slug, "version": plan.version},
        "lines": lines,
        "subtotal": subtotal,
        "total": subtotal,
        "issued_at": issued_at,
    }


def void_credit_note(invoice: Mapping[str, Any], sequence: int, reason: str | None, issued_at: str) -> dict[str, Any]:
    """The credit note that voids `invoice`: its whole total back, numbered in the credit-note sequence."""
    tenant_id = str(invoice["tenant_id"])
    line = {"type": "void", "invoice": invoice["id"], "number": invoice["number"], "amount": int(invoice["total"])}
    return {
        **{k: invoice[k] for k in ("tenant_id", "period", "period_start", "period_end", "currency", "minor_units", "plan")},
        "id": credit_note_id(tenant_id, f"void/{invoice['id']}"),
        "kind": CREDIT_NOTE,
        "number": document_number(tenant_id, CREDIT_NOTE, sequence),
        "status": "finalized",
        "lines": [line],
        "subtotal": line["amount"],
        "total": line["amount"],
        "issued_at": issued_at,
        "reason": f"voids {invoice['number']}" + (f": {reason}" if reason else ""),
    }


# The billing view's changes, folded from control events -----------------------------


@dataclass(frozen=True, slots=True)
class DocumentFinalized:
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PeriodClosed:
    period: str
    closed_at: str
    invoices: int
    cut: dict[str, Any]
    held: dict[str, str]  # tenant -> why the close did not invoice it


@dataclass(frozen=True, slots=True)
class HeldInvoiced:
    period: str
    invoices: int  # documents issued for the period in all since its close
    held: dict[str, str]  # the tenants still held


@dataclass(frozen=True, slots=True)
class StatusChanged:
    invoice_id: str
    status: str
    at: str
    source: str


BillingChange = DocumentFinalized | PeriodClosed | HeldInvoiced | StatusChanged


def changes(event: Envelope) -> list[BillingChange]:
    """What one control event changes in the billing views. Other types change nothing."""
    data: dict[str, Any] = event.data or {}
    match event.type:
        case "omni.invoice.finalized" | "omni.credit_note.finalized":
            return [DocumentFinalized(data["invoice"])]
        case "omni.invoice.status_changed":
            return [StatusChanged(data["invoice_id"], data["status"], data["at"], data.get("source", "admin"))]
        case "omni.billing.period_closed":
            return [PeriodClosed(data["period"], data["closed_at"], int(data["invoices"]), data["cut"], data.get("held", {}))]
        case "omni.billing.held_invoiced":
            return [HeldInvoiced(data["period"], int(data["invoices"]), data["held"])]
    return []
