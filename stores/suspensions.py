"""The tenants' suspensions: every change of a tenant's status, as the catalog's fold wrote it.

`tenant_status_changes` holds one row per suspension or resumption (a tenant's `version` orders
them; a change relayed again is written once). A tenant's status is its last row's (none: active);
the rows are also its `omni.tenant.suspended` and `omni.tenant.resumed` notifications, under the
ids of the notices its webhook endpoints are sent (commands.suspensions).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from projections.suspensions import StatusChanged
from schemas.suspensions import TENANT_RESUMED, TENANT_SUSPENDED, TenantStatus
from stores.database import Tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenant_status_changes (
    tenant_id TEXT NOT NULL, version BIGINT NOT NULL, notice_id TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, at TEXT NOT NULL, PRIMARY KEY (tenant_id, version));
CREATE INDEX IF NOT EXISTS tenant_status_changes_by_time ON tenant_status_changes (tenant_id, at, notice_id)
"""

# The last change of each tenant: its status now.
_LAST = """SELECT c.tenant_id, c.reason, c.at FROM tenant_status_changes c
    WHERE c.status = 'suspended' AND c.version = (SELECT MAX(l.version) FROM tenant_status_changes l WHERE l.tenant_id = c.tenant_id)"""


@dataclass(frozen=True, slots=True)
class Suspension:
    reason: str
    since: str


def record(tx: Tx, change: StatusChanged) -> None:
    tx.execute(
        "INSERT INTO tenant_status_changes VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (change.tenant_id, change.version, change.notice_id, change.status, change.reason, change.at),
    )


def suspension(tx: Tx, tenant_id: str) -> Suspension | None:
    """The tenant's suspension now; None while it is active."""
    return suspensions(tx, [tenant_id]).get(tenant_id)


def suspensions(tx: Tx, tenant_ids: Iterable[str]) -> dict[str, Suspension]:
    """The suspensions now of those of `tenant_ids` that are suspended."""
    wanted = list(dict.fromkeys(tenant_ids))
    found: dict[str, Suspension] = {}
    for start in range(0, len(wanted), 400):
        chunk = wanted[start : start + 400]
        marks = ", ".join("?" * len(chunk))
        for tenant_id, reason, at in tx.execute(f"{_LAST} AND c.tenant_id IN ({marks})", tuple(chunk)):
            found[tenant_id] = Suspension(reason or "", at)
    return found


def tenants(tx: Tx, limit: int, after: str | None, status: TenantStatus | None) -> list[tuple[str, str, str, str]]:
    """The tenants (id, name, plan, created_at) in id order, `limit` of them after `after`, only those
    of `status` now if it is given."""
    where = "t.tenant_id > ?"
    if status is not None:
        suspended_now = f"t.tenant_id IN (SELECT s.tenant_id FROM ({_LAST}) s)"
        where += f" AND {'' if status == 'suspended' else 'NOT '}{suspended_now}"
    rows = tx.execute(
        f"SELECT t.tenant_id, t.name, t.plan, t.created_at FROM tenants t WHERE {where} ORDER BY t.tenant_id LIMIT ?",
        (after or "", limit),
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def notifications(
    tx: Tx, tenant_id: str, limit: int, before: tuple[str, str] | None
) -> list[tuple[str, str, str, str | None, str]]:
    """The tenant's suspensions and resumptions as notifications, newest first: (id, tenant, type,
    reason, occurred_at), `limit` of them before `before` (an occurred_at and an id)."""
    where, params = "tenant_id=?", [tenant_id]
    if before is not None:
        where += " AND (at < ? OR (at = ? AND notice_id < ?))"
        params += [before[0], before[0], before[1]]
    rows = tx.execute(
        f"SELECT notice_id, tenant_id, status, reason, at FROM tenant_status_changes WHERE {where} "
        "ORDER BY at DESC, notice_id DESC LIMIT ?",
        (*params, limit),
    )
    return [(r[0], r[1], TENANT_SUSPENDED if r[2] == "suspended" else TENANT_RESUMED, r[3], r[4]) for r in rows]
