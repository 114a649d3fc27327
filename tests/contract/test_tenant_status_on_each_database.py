"""Tenants' suspensions on each database, as the catalog's fold writes them from control events the
outbox may relay more than once: a tenant's last change is its status, whatever order the rows came
in; a change relayed again is one row; the status filter of the tenant list and the notifications'
pages agree with it."""

from __future__ import annotations

from projections.suspensions import StatusChanged
from schemas.suspensions import TENANT_RESUMED, TENANT_SUSPENDED
from stores import suspensions, views
from stores.database import Database
from stores.suspensions import Suspension

A, B, C = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b", "00000000-0000-0000-0000-00000000000c"


def change(tenant_id: str, version: int, status: str, at: str, reason: str | None = None) -> StatusChanged:
    notice = f"{version:08d}-0000-0000-0000-{tenant_id[-12:]}"
    return StatusChanged(tenant_id, version, notice, status, reason, at)  # type: ignore[arg-type]


def test_the_last_change_is_the_status_whatever_is_relayed_again(database: Database) -> None:
    with database.transaction() as tx:
        for tenant_id in (A, B, C):
            views.upsert_tenant(tx, tenant_id, tenant_id[-1], "pro", "2026-12-01T00:00:00Z")
        suspensions.record(tx, change(A, 2, "suspended", "2026-12-07T08:00:00Z", "unpaid"))
        suspensions.record(tx, change(B, 3, "active", "2026-12-07T08:02:00Z"))  # its resumption came first
        suspensions.record(tx, change(B, 2, "suspended", "2026-12-07T08:01:00Z", "fraud"))
        suspensions.record(tx, change(A, 2, "suspended", "2026-12-07T08:00:00Z", "unpaid"))  # relayed again
    with database.transaction() as tx:
        assert suspensions.suspension(tx, A) == Suspension("unpaid", "2026-12-07T08:00:00Z")
        assert suspensions.suspension(tx, B) is None and suspensions.suspension(tx, C) is None
        assert suspensions.suspensions(tx, [A, B, C, A]) == {A: Suspension("unpaid", "2026-12-07T08:00:00Z")}
        assert [t[0] for t in suspensions.tenants(tx, 10, None, "suspended")] == [A]
        assert [t[0] for t in suspensions.tenants(tx, 10, None, "active")] == [B, C]
        assert [t[0] for t in suspensions.tenants(tx, 2, None, None)] == [A, B]
        assert [t[0] for t in suspensions.tenants(tx, 2, B, None)] == [C]
        assert tx.execute("SELECT COUNT(*) FROM tenant_status_changes")[0][0] == 3


def test_a_tenants_changes_are_its_notifications_newest_first_in_pages(database: Database) -> None:
    with database.transaction() as tx:
        for version in range(2, 7):
            status = "suspended" if version % 2 == 0 else "active"
            suspensions.record(
                tx, change(A, version, status, f"2026-12-07T08:0{version}:00Z", "r" if status == "suspended" else None)
            )
        suspensions.record(tx, change(B, 2, "suspended", "2026-12-07T09:00:00Z", "other"))
    with database.transaction() as tx:
        first = suspensions.notifications(tx, A, 3, None)
        assert [(n[2], n[4]) for n in first] == [
            (TENANT_SUSPENDED, "2026-12-07T08:06:00Z"),
            (TENANT_RESUMED, "2026-12-07T08:05:00Z"),
            (TENANT_SUSPENDED, "2026-12-07T08:04:00Z"),
        ]
        rest = suspensions.notifications(tx, A, 3, (first[-1][4], first[-1][0]))
        assert [n[4] for n in rest] == ["2026-12-07T08:03:00Z", "2026-12-07T08:02:00Z"]
        assert {n[1] for n in first + rest} == {A} and [n[3] for n in rest] == [None, "r"]
