"""The plans view's tables: plans (their current version), tenants' plans (in `tenants`), overrides.

Written by the catalog projector with its checkpoint (streams.projectors), read by the quota routes
and the meter projector's threshold fold. A plan's row is replaced only by a higher version, so a
control event relayed twice, or out of order after a relay's crash, changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from commands.meters import override_user, plan_user
from commands.plans import entitlement_json
from projections.quotas import Quota, in_effect
from schemas.plans import Entitlement
from stores.database import Tx

SLUG = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")  # plans' and meters' slugs (schemas.plans.SLUG_PATTERN)

SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    slug TEXT PRIMARY KEY, version INTEGER NOT NULL, name TEXT, entitlements TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plan_versions (
    slug TEXT NOT NULL, version INTEGER NOT NULL, name TEXT, billing TEXT NOT NULL, published_at TEXT NOT NULL,
    PRIMARY KEY (slug, version));
CREATE TABLE IF NOT EXISTS quota_overrides (
    tenant_id TEXT NOT NULL, meter TEXT NOT NULL, entitlement TEXT NOT NULL, PRIMARY KEY (tenant_id, meter));
"""


def _entitlements(text: str) -> list[Entitlement]:
    return [Entitlement.from_stored(e) for e in orjson.loads(text)]


def put_plan(
    tx: Tx, slug: str, version: int, name: str | None, entitlements: Iterable[Entitlement], at: str, billing: dict[str, Any]
) -> None:
    """The plan's current version (entitlements), and every version's billing: an invoice names the
    version that priced it, and a late adjustment is priced by that version again."""
    tx.execute(
        "INSERT INTO plan_versions VALUES (?, ?, ?, ?, ?) ON CONFLICT (slug, version) DO NOTHING",
        (slug, version, name, orjson.dumps(billing, option=orjson.OPT_SORT_KEYS).decode(), at),
    )
    body = orjson.dumps([entitlement_json(e) for e in entitlements]).decode()
    tx.execute(
        "INSERT INTO plans VALUES (?, ?, ?, ?, ?) ON CONFLICT (slug) DO UPDATE SET version=excluded.version, "
        "name=excluded.name, entitlements=excluded.entitlements, updated_at=excluded.updated_at "
        "WHERE plans.version < excluded.version",
        (slug, version, name, body, at),
    )


def assign_plan(tx: Tx, tenant_id: str, plan: str) -> None:
    tx.execute("UPDATE tenants SET plan=? WHERE tenant_id=?", (plan, tenant_id))


def set_override(tx: Tx, tenant_id: str, entitlement: Entitlement) -> None:
    body = orjson.dumps(entitlement_json(entitlement)).decode()
    tx.execute(
        "INSERT INTO quota_overrides VALUES (?, ?, ?) ON CONFLICT (tenant_id, meter) DO UPDATE SET entitlement=excluded.entitlement",
        (tenant_id, entitlement.meter, body),
    )


def remove_override(tx: Tx, tenant_id: str, meter: str) -> None:
    tx.execute("DELETE FROM quota_overrides WHERE tenant_id=? AND meter=?", (tenant_id, meter))


def meter_users(tx: Tx, meter: str) -> list[str]:
    """Who names `meter` as the views hold it (commands.meters): plans whose current entitlements or
    any version's prices name it, and tenants whose override is on it."""
    users = []
    for slug, entitlements in tx.execute("SELECT slug, entitlements FROM plans"):
        if any(e.get("meter") == meter for e in orjson.loads(entitlements)):
            users.append(plan_user(slug))
    for slug, billing in tx.execute("SELECT slug, billing FROM plan_versions"):
        if any(p.get("meter") == meter for p in orjson.loads(billing).get("prices", ())):
            users.append(plan_user(slug))
    users += [
        override_user(tenant_id) for (tenant_id,) in tx.execute("SELECT tenant_id FROM quota_overrides WHERE meter=?", (meter,))
    ]
    return sorted(set(users))


PlanRow = tuple[str, int, str | None, list[Entitlement], str, dict[str, Any]]
_PLAN_ROWS = (
    "SELECT p.slug, p.version, p.name, p.entitlements, p.updated_at, v.billing FROM plans p "
    "LEFT JOIN plan_versions v ON v.slug = p.slug AND v.version = p.version"
)


def _plan_row(row: tuple[Any, ...]) -> PlanRow:
    return (row[0], int(row[1]), row[2], _entitlements(row[3]), row[4], orjson.loads(row[5]) if row[5] else {})


def plans(tx: Tx) -> list[PlanRow]:
    return [_plan_row(r) for r in tx.execute(f"{_PLAN_ROWS} ORDER BY p.slug")]


def plan(tx: Tx, slug: str) -> PlanRow | None:
    rows = tx.execute(f"{_PLAN_ROWS} WHERE p.slug=?", (slug,))
    return _plan_row(rows[0]) if rows else None


def tenants_on(tx: Tx, plan_slug: str) -> list[str]:
    return [r[0] for r in tx.execute("SELECT tenant_id FROM tenants WHERE plan=? ORDER BY tenant_id", (plan_slug,))]


def quotas_of(tx: Tx, tenant_id: str) -> dict[str, Quota]:
    """The tenant's quota on each meter that has one: its overrides over its plan's entitlements."""
    rows = tx.execute("SELECT plan FROM tenants WHERE tenant_id=?", (tenant_id,))
    plan_slug = rows[0][0] if rows else None
    found = plan(tx, plan_slug) if plan_slug else None
    overrides = tx.execute("SELECT entitlement FROM quota_overrides WHERE tenant_id=?", (tenant_id,))
    return in_effect(plan_slug, found[3] if found else [], [Entitlement.from_stored(orjson.loads(r[0])) for r in overrides])


def any_quota(tx: Tx) -> bool:
    """Whether any plan has an entitlement or any tenant an override (else no threshold can be crossed)."""
    return any(row[3] for row in plans(tx)) or bool(tx.execute("SELECT 1 FROM quota_overrides LIMIT 1"))


def quotas_on(tx: Tx, tenant_ids: Iterable[str], meters: Iterable[str]) -> dict[tuple[str, str], Quota]:
    """Each (tenant, meter) among those given that has a quota: what the threshold fold needs, per
    batch. A few statements whatever the number of tenants; two when no plan or override names
    any of the meters (the common case before quotas are used)."""
    wanted = set(meters)
    by_plan = {row[0]: [e for e in row[3] if e.meter in wanted] for row in plans(tx)}
    by_plan = {slug: found for slug, found in by_plan.items() if found}
    marks = ", ".join("?" for _ in wanted)
    if not by_plan and not tx.execute(f"SELECT 1 FROM quota_overrides WHERE meter IN ({marks}) LIMIT 1", tuple(wanted)):
        return {}
    tenants = sorted(set(tenant_ids))
    plan_of: dict[str, str] = {}
    own: dict[str, list[Entitlement]] = {}
    for start in range(0, len(tenants), 400):
        chunk = tenants[start : start + 400]
        marks = ", ".join("?" for _ in chunk)
        plan_of.update(
            (r[0], r[1]) for r in tx.execute(f"SELECT tenant_id, plan FROM tenants WHERE tenant_id IN ({marks})", chunk)
        )
        for tenant_id, text in tx.execute(
            f"SELECT tenant_id, entitlement FROM quota_overrides WHERE tenant_id IN ({marks})", chunk
        ):
            own.setdefault(tenant_id, []).append(Entitlement.from_stored(orjson.loads(text)))
    found: dict[tuple[str, str], Quota] = {}
    for tenant_id in tenants:
        plan_slug = plan_of.get(tenant_id)
        for meter, quota in in_effect(plan_slug, by_plan.get(plan_slug or "", []), own.get(tenant_id, [])).items():
            if meter in wanted:
                found[(tenant_id, meter)] = quota
    return found
