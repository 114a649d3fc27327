"""Invoices as a close would bill them from a runner's views, the usage they read first checked
against tests/truth.py's monthly values (computed from the events with none of the code under
test): the runner parity test and the soak share it."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from projections.invoices import BillingPeriod, PricedPlan, bill, canonical
from schemas.billing import Billing
from schemas.envelope import Envelope
from schemas.meters import Aggregation, MeterDefinition, WindowSize
from stores import billing as billing_store
from stores.database import Database
from tests import truth


def priced(meters: Sequence[MeterDefinition]) -> PricedPlan:
    """A three-decimal currency, a fee, graduated tiers on the first meter and packages on the others."""
    first, *rest = meters
    tiers = [{"up_to": 5000, "unit_price": "0.0004"}, {"up_to": None, "unit_price": "0.0001"}]
    prices = [{"meter": first.slug, "model": "graduated", "tiers": tiers}]
    prices += [{"meter": m.slug, "model": "package", "package_size": 250, "package_price": "0.125"} for m in rest]
    return PricedPlan("truth", 1, Billing.model_validate({"currency": "KWD", "fee": "1.500", "prices": prices}))


def invoices_from(
    db: Database, on_the_log: list[tuple[int, Envelope]], meters: Sequence[MeterDefinition], tenants: Sequence[str]
) -> list[bytes]:
    """Every tenant's invoice for every month the log touched, in canonical bytes."""
    assert all(m.aggregation in (Aggregation.SUM, Aggregation.COUNT) for m in meters)
    plan = priced(meters)
    kinds = {m.slug: m.aggregation.value for m in meters}
    events = truth.counted(on_the_log)  # once: the truth scans the whole log per query
    monthly = {
        (tenant, meter.slug): truth.answer_counted(events, tenant, meter, truth.Query(window_size=WindowSize.MONTH))
        for tenant in tenants
        for meter in meters
    }
    documents = []
    for month in sorted({BillingPeriod.of(event.event_time).text for _, event in on_the_log}):
        period = BillingPeriod.parse(month)
        assert period is not None
        with db.transaction() as tx:
            usage = billing_store.period_usage(tx, kinds, period)
        for tenant in tenants:
            for meter in meters:
                want = sum((Decimal(r[4] or 0) for r in monthly[tenant, meter.slug] if r[0] == period.start), Decimal(0))
                assert usage.get(tenant, {}).get(meter.slug, Decimal(0)) == want, (tenant, meter.slug, month)
            statement = bill(
                tenant_id=tenant, period=period, plan=plan, usage=usage.get(tenant, {}), earlier={}, billed={},
                plan_at=lambda slug, version: plan, next_invoice=1, next_credit_note=1, issued_at="2030-01-01T00:00:00Z",
            )  # fmt: skip
            assert statement.invoice is not None
            documents.append(canonical(statement.invoice))
    return documents
