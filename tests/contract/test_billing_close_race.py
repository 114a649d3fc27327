"""Closes racing over the same billing accounts, in either event store: the close that loses the race
is redone on the accounts as the winner left them, so every tenant's numbers stay gapless, and a
period closes once. The race is forced, not hoped for: the loser's accounts are read, then the
winner's close runs to the end, then the loser saves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.application import AggregateNotFoundError

from commands.billing import BillingAccount, UsageCut
from commands.control_plane import CommandContext, ControlPlane
from commands.errors import Conflict
from commands.ids import billing_period_aggregate_id
from omni.bootstrap import event_store_env
from omni.settings import Settings
from projections.invoices import BillingPeriod, PricedPlan
from schemas.billing import Billing
from tests.contract.conftest import DATABASE_URL, postgres_or_skip

CTX = CommandContext(key_id="admin")
PLAN = PricedPlan("pro", 1, Billing.model_validate({"currency": "EUR", "fee": "5.00"}))


@pytest.fixture(params=["sqlite", "postgres"])
def control(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ControlPlane]:
    if request.param == "sqlite":
        plane = ControlPlane(env=event_store_env(Settings(mode="embedded", data_dir=tmp_path)))
        yield plane
        plane.close()
        return
    postgres_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    plane = ControlPlane(env=event_store_env(Settings(mode="kafka", database_url=DATABASE_URL, database_schema=schema)))
    yield plane
    plane.close()
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def cut(period: str, tenants: list[str]) -> UsageCut:
    found = BillingPeriod.parse(period)
    assert found is not None
    return UsageCut(
        period=found,
        tenants={t: "pro" for t in tenants},
        plans={"pro": PLAN},
        usage={t: {} for t in tenants},
        earlier={},
        offsets={},
        plan_at=lambda slug, version: PLAN,
    )


def numbers(control: ControlPlane, tenant_id: str) -> list[str]:
    """The tenant's invoice numbers, from its account's events (none before its first invoice)."""
    try:
        account = control.repository.get(BillingAccount.create_id(tenant_id))
    except AggregateNotFoundError:
        return []
    stored = control.repository.event_store.get(account.id)
    return sorted(e.invoice["number"] for e in stored if type(e).__qualname__ == "BillingAccount.InvoiceFinalized")  # type: ignore[attr-defined]


def test_a_close_that_loses_a_race_is_redone_and_numbers_stay_gapless(control: ControlPlane, monkeypatch: Any) -> None:
    tenants = [str(control.create_tenant(CTX, f"t{i}", "pro")[0].id) for i in range(3)]
    reads = 0
    original = ControlPlane._billing_account

    def read_then_lose(self: ControlPlane, tenant_id: str) -> BillingAccount | None:
        nonlocal reads
        reads += 1
        account = original(self, tenant_id)
        if reads == len(tenants):  # November's close has read every account: December's wins the race now
            monkeypatch.setattr(ControlPlane, "_billing_account", original)
            control.close_period(CTX, cut("2026-12", tenants), "2027-01-02T00:00:00Z")
        return account

    monkeypatch.setattr(ControlPlane, "_billing_account", read_then_lose)
    closed = control.close_period(CTX, cut("2026-11", tenants), "2027-01-02T00:00:01Z")
    assert len(closed.invoices) == 3
    for tenant_id in tenants:
        prefix = tenant_id.replace("-", "")[:8].upper()
        assert numbers(control, tenant_id) == [f"{prefix}-0001", f"{prefix}-0002"]
    assert {d["number"][-4:] for d in closed.invoices} == {"0002"}  # November redone after December took 0001

    with pytest.raises(Conflict, match="already closed"):
        control.close_period(CTX, cut("2026-11", tenants), "2027-01-03T00:00:00Z")
    assert numbers(control, tenants[0])[-1].endswith("-0002")


def test_usage_that_no_price_bills_issues_nothing_and_stores_no_account(control: ControlPlane) -> None:
    free = PricedPlan("free", 1, Billing.model_validate({"currency": "EUR", "prices": []}))
    tenant_id = str(control.create_tenant(CTX, "t", "free")[0].id)
    found = BillingPeriod.parse("2026-11")
    assert found is not None
    closed = control.close_period(
        CTX,
        UsageCut(found, {tenant_id: "free"}, {"free": free}, {tenant_id: {"tokens": Decimal(0)}}, {}, {}, lambda s, v: free),
        "2026-12-02T00:00:00Z",
    )
    assert closed.invoices == [] and control.billed_so_far(tenant_id) == ({}, 1, 1)
    assert control._billing_account(tenant_id) is None


def test_a_close_cut_short_is_resumed_and_bills_each_tenant_once(control: ControlPlane, monkeypatch: Any) -> None:
    from commands import billing

    monkeypatch.setattr(billing, "CLOSE_CHUNK", 2)
    tenants = sorted(str(control.create_tenant(CTX, f"t{i}", "pro")[0].id) for i in range(5))
    saves = 0
    original = ControlPlane.save

    def fail_the_second_chunk(self: ControlPlane, *objs: Any, **kwargs: Any) -> Any:
        nonlocal saves
        if any(isinstance(o, BillingAccount) for o in objs):
            saves += 1
            if saves == 2:
                raise ConnectionError("the event store went away mid-close")
        return original(self, *objs, **kwargs)

    monkeypatch.setattr(ControlPlane, "save", fail_the_second_chunk)
    with pytest.raises(ConnectionError):
        control.close_period(CTX, cut("2026-11", tenants), "2026-12-02T00:00:00Z")
    assert [bool(numbers(control, t)) for t in tenants] == [True, True, False, False, False]
    assert not control.is_closed("2026-11")

    closed = control.close_period(CTX, cut("2026-11", tenants), "2026-12-02T00:05:00Z")  # resumed
    assert sorted(d["tenant_id"] for d in closed.invoices) == tenants[2:]
    assert control.is_closed("2026-11")
    for tenant_id in tenants:
        assert [n[-4:] for n in numbers(control, tenant_id)] == ["0001"]  # once each, whichever attempt
    record = control.repository.get(billing_period_aggregate_id("2026-11"))
    assert record.closed_at == "2026-12-02T00:05:00Z"
    stored = [e for e in control.repository.event_store.get(record.id) if type(e).__qualname__ == "ClosedPeriod.Closed"]
    assert [e.invoices for e in stored] == [5]  # type: ignore[attr-defined]
