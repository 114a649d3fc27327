"""Plans and quota overrides: control-plane aggregates in the event store.

A plan is published at version 1 and revised to the next version by each change; its tenants get
the new entitlements from that change on (usage so far in the period carries over: it is the
meter's, not the plan's). A tenant's plan is an event on its Tenant aggregate. An override is an
aggregate per (tenant, meter), set and removed. Each change is saved with its audit entry.

Every entitlement names an additive meter (SUM or COUNT) that exists: quotas count usage, and a
maximum or an average cannot be used up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from commands import meters
from commands.errors import Conflict, Invalid, NotFound
from commands.ids import override_aggregate_id, plan_aggregate_id
from schemas.billing import MeterPrice, billing_json
from schemas.meters import MeterDefinition
from schemas.plans import Entitlement, PlanBody

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane, Meter

PLATFORM = "_platform"
T = TypeVar("T")


class Plan(Aggregate):
    @staticmethod
    def create_id(slug: str, body: dict[str, Any]) -> UUID:
        return plan_aggregate_id(slug)

    @event("Published")
    def __init__(self, slug: str, body: dict[str, Any]) -> None:
        self.slug = slug
        self.body = body
        self.plan_version = 1
        self.priced: set[str] = set(_priced(body))  # every meter any version priced: its invoices name them

    @event("Revised")
    def revise(self, slug: str, plan_version: int, body: dict[str, Any]) -> None:
        """The event names the plan and its new version, so readers of the log need nothing else."""
        self.body = body
        self.plan_version = plan_version
        self.priced |= set(_priced(body))

    def names(self) -> set[str]:
        """The meters this plan keeps from deletion: its entitlements' now, every version's prices."""
        return {e["meter"] for e in self.body.get("entitlements", ())} | self.priced


def _priced(body: dict[str, Any]) -> list[str]:
    return [price["meter"] for price in body.get("prices", ())]


class QuotaOverride(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, meter: str, entitlement: dict[str, Any]) -> UUID:
        return override_aggregate_id(tenant_id, meter)

    @event("Set")
    def __init__(self, tenant_id: str, meter: str, entitlement: dict[str, Any]) -> None:
        self.tenant_id = tenant_id
        self.meter = meter
        self.entitlement: dict[str, Any] | None = entitlement

    @event("Changed")
    def change(self, tenant_id: str, meter: str, entitlement: dict[str, Any]) -> None:
        self.entitlement = entitlement

    @event("Removed")
    def remove(self, tenant_id: str, meter: str) -> None:
        self.entitlement = None


def entitlement_json(entitlement: Entitlement) -> dict[str, Any]:
    """As stored in events: the limit as exact decimal text."""
    body = entitlement.model_dump(mode="json")
    body["limit"] = str(entitlement.limit)
    return body


def plan_json(body: PlanBody) -> dict[str, Any]:
    """As stored in events: a plan that charges nothing has no billing keys (schemas.billing.billing_json)."""
    return {"name": body.name, "entitlements": [entitlement_json(e) for e in body.entitlements], **billing_json(body)}


def _by_meter(body: dict[str, Any]) -> dict[str, Any]:
    """A plan's body with its entitlements and prices in the order of their meters: one of each per
    meter, so their order means nothing, and the same plan sent in another order is no new version."""
    return body | {
        part: sorted(body[part], key=lambda item: str(item["meter"])) for part in ("entitlements", "prices") if part in body
    }


class PlanCommands:
    """The plan and quota commands of the ControlPlane application (mixed into it)."""

    def put_plan(
        self: ControlPlane, ctx: CommandContext, slug: str, body: PlanBody, invoiced_in: frozenset[str] = frozenset()
    ) -> tuple[Plan, bool]:
        """Publish a plan, or revise it when the body differs; returns the plan and whether it is new.

        `invoiced_in`: the currencies the plan's tenants have been invoiced in (read from the views at
        the edge). A plan that charged nothing may start charging, but only in that currency: a
        tenant keeps the currency it is invoiced in, as assign_plan holds for a tenant moved."""
        resource = f"plans/{slug}"
        with self._rejections_audited(ctx, "plan.put", resource):
            # A plan or a meter changed meanwhile (a plan or override naming one of its meters, say):
            # decided again on what that left, as if the two came one after the other.
            return _retried(lambda: self._put_plan(ctx, slug, body, invoiced_in), f"plan {slug!r} changed concurrently; retry")

    def _put_plan(
        self: ControlPlane, ctx: CommandContext, slug: str, body: PlanBody, invoiced_in: frozenset[str]
    ) -> tuple[Plan, bool]:
        checked = self._check_meters(body.entitlements, body.prices)
        stored = plan_json(body)
        plan = self._get_plan(slug)
        created = plan is None
        if plan is not None and plan.body.get("currency") not in (None, stored.get("currency")):
            raise Invalid(
                f"plan {slug!r} charges in {plan.body['currency']}; its currency cannot change (publish a new plan)",
                [{"location": "body.currency", "reason": "a plan's currency cannot change"}],
                title="Invalid plan",
                kind="invalid-plan",
            )
        others = ", ".join(sorted(invoiced_in - {stored["currency"]})) if "currency" in stored else ""
        if others:
            reason = f"a tenant keeps the currency it is invoiced in ({others})"
            raise Invalid(
                f"plan {slug!r} has tenants invoiced in {others}; it cannot charge in {stored['currency']}",
                [{"location": "body.currency", "reason": reason}],
                title="Invalid plan",
                kind="invalid-plan",
            )
        before = set() if plan is None else plan.names()
        if plan is None:
            plan = Plan(slug=slug, body=stored)
        elif _by_meter(plan.body) != _by_meter(stored):
            plan.revise(slug=slug, plan_version=plan.plan_version + 1, body=stored)
        user, after = meters.plan_user(slug), plan.names()
        touched = self._named(user, sorted(after), checked) + self._unnamed(user, sorted(before - after))
        self.save(plan, *touched, self._audit(ctx, "plan.put", f"plans/{slug}", PLATFORM))
        return plan, created

    def assign_plan(self: ControlPlane, ctx: CommandContext, tenant_id: str, slug: str) -> None:
        resource = f"tenants/{tenant_id}/plan"
        with self._rejections_audited(ctx, "tenant.plan.assign", resource):
            tenant = self.get_tenant(tenant_id)
            plan = self._get_plan(slug)
            if plan is None:
                raise Invalid(
                    f"plan {slug!r} is not defined",
                    [{"location": "body.plan", "reason": f"plan {slug!r} is not defined"}],
                    title="Invalid plan",
                    kind="invalid-plan",
                )
            billed_in, charges_in = self.billing_currency(str(tenant.id)), plan.body.get("currency")
            if billed_in is not None and charges_in not in (None, billed_in):
                raise Invalid(
                    f"tenant {tenant.id} is invoiced in {billed_in}; plan {slug!r} charges in {charges_in}",
                    [{"location": "body.plan", "reason": f"a tenant keeps the currency it is invoiced in ({billed_in})"}],
                    title="Invalid plan",
                    kind="invalid-plan",
                )
            if tenant.plan != slug:
                tenant.assign_plan(tenant_id=str(tenant.id), plan=slug)
            try:
                self.save(tenant, self._audit(ctx, "tenant.plan.assign", f"tenants/{tenant.id}/plan", str(tenant.id)))
            except IntegrityError as race:
                raise Conflict(f"tenant {tenant_id} changed concurrently; retry") from race

    def set_quota_override(self: ControlPlane, ctx: CommandContext, tenant_id: str, entitlement: Entitlement) -> None:
        resource = f"tenants/{tenant_id}/quotas/{entitlement.meter}"
        with self._rejections_audited(ctx, "quota.override.set", resource):
            tenant = str(self.get_tenant(tenant_id).id)
            # Overrides of many tenants on one meter each record their name on it: one saved first,
            # the others are decided again on what it left.
            _retried(lambda: self._set_override(ctx, tenant, entitlement), "the override changed concurrently; retry")

    def _set_override(self: ControlPlane, ctx: CommandContext, tenant: str, entitlement: Entitlement) -> None:
        checked = self._check_meters([entitlement], locations=["path.meter"])
        stored = entitlement_json(entitlement)
        override = self._get_override(tenant, entitlement.meter)
        if override is None:
            override = QuotaOverride(tenant_id=tenant, meter=entitlement.meter, entitlement=stored)
        elif override.entitlement != stored:
            override.change(tenant_id=tenant, meter=entitlement.meter, entitlement=stored)
        named = self._named(meters.override_user(tenant), [entitlement.meter], checked)
        resource = f"tenants/{tenant}/quotas/{entitlement.meter}"
        self.save(override, *named, self._audit(ctx, "quota.override.set", resource, tenant))

    def remove_quota_override(self: ControlPlane, ctx: CommandContext, tenant_id: str, meter: str) -> None:
        resource = f"tenants/{tenant_id}/quotas/{meter}"
        with self._rejections_audited(ctx, "quota.override.remove", resource):
            tenant = str(self.get_tenant(tenant_id).id)
            _retried(lambda: self._remove_override(ctx, tenant, tenant_id, meter), "the override changed concurrently; retry")

    def _remove_override(self: ControlPlane, ctx: CommandContext, tenant: str, asked: str, meter: str) -> None:
        override = self._get_override(tenant, meter)
        if override is None or override.entitlement is None:
            raise NotFound(f"tenant {asked} has no override on meter {meter!r}")
        override.remove(tenant_id=tenant, meter=meter)
        unnamed = self._unnamed(meters.override_user(tenant), [meter])
        self.save(override, *unnamed, self._audit(ctx, "quota.override.remove", f"tenants/{tenant}/quotas/{meter}", tenant))

    def _check_meters(
        self: ControlPlane,
        entitlements: list[Entitlement],
        prices: Sequence[MeterPrice] = (),
        *,
        locations: Sequence[str] | None = None,
    ) -> dict[str, Meter]:
        """Every entitlement's and price's meter exists and is additive; else Invalid, naming each
        where the request holds it: `locations` for the entitlements' meters (an override's is its
        path, `path.meter`), else `body.entitlements.N.meter`. Quotas count usage up, and invoices
        bill the usage of a period: neither has a meaning for a maximum or an average. Returns the
        meters as checked: the names recorded on them (`_named`) are saved on those very versions, so a
        deletion saved since makes the save fail rather than name a deleted meter."""
        errors: list[dict[str, object]] = []
        where = locations or [f"body.entitlements.{i}.meter" for i in range(len(entitlements))]
        named = [(where[i], e.meter, "quotas") for i, e in enumerate(entitlements)]
        named += [(f"body.prices.{i}.meter", p.meter, "prices") for i, p in enumerate(prices)]
        checked: dict[str, Meter] = {}
        for index, (location, meter, what) in enumerate(named):
            aggregate = checked.get(meter) or meters.stored_meter(self, meter)
            definition = None if aggregate is None else MeterDefinition.model_validate(aggregate.definition)
            if aggregate is not None:
                checked[meter] = aggregate
            if definition is None:
                errors.append({"location": location, "reason": f"meter {meter!r} is not defined"})
            elif definition.aggregation.value not in ("SUM", "COUNT"):
                errors.append(
                    {
                        "location": location,
                        "reason": f"meter {meter!r} aggregates {definition.aggregation.value}: "
                        f"{what} apply to SUM and COUNT meters only",
                    }
                )
            elif what == "quotas" and definition.aggregation.value == "COUNT":
                limit = entitlements[index].limit
                if limit != limit.to_integral_value():  # a COUNT meter counts events: 2.5 would take two
                    errors.append(
                        {
                            "location": "body.limit" if locations else f"body.entitlements.{index}.limit",
                            "reason": f"meter {meter!r} counts events: its limit must be a whole number, not {limit}",
                        }
                    )
        if errors:
            title, kind = ("Invalid quota", "invalid-quota") if not prices else ("Invalid plan", "invalid-plan")
            raise Invalid("; ".join(str(e["reason"]) for e in errors), errors, title=title, kind=kind)
        return checked

    def _named(self: ControlPlane, user: str, slugs: Sequence[str], checked: dict[str, Meter]) -> list[Meter]:
        """The meters `user` names that do not list it yet, each with it added: saved with the change
        that names them, so a deletion racing that change finds it, or makes it fail. `checked`: the
        meters as `_check_meters` read them."""
        named = []
        for slug in dict.fromkeys(slugs):
            meter = checked.get(slug) or meters.stored_meter(self, slug)
            if meter is not None and user not in meter.users:
                meter.name_by(slug=slug, user=user)
                named.append(meter)
        return named

    def _unnamed(self: ControlPlane, user: str, slugs: Sequence[str]) -> list[Meter]:
        """The meters `user` no longer names that list it, each with it taken off."""
        unnamed = []
        for slug in dict.fromkeys(slugs):
            meter = meters.stored_meter(self, slug)
            if meter is not None and user in meter.users:
                meter.unname_by(slug=slug, user=user)
                unnamed.append(meter)
        return unnamed

    def _get_plan(self: ControlPlane, slug: str) -> Plan | None:
        try:
            plan: object = self.repository.get(plan_aggregate_id(slug))
        except AggregateNotFoundError:
            return None
        return plan if isinstance(plan, Plan) else None

    def _get_override(self: ControlPlane, tenant_id: str, meter: str) -> QuotaOverride | None:
        try:
            override: object = self.repository.get(override_aggregate_id(tenant_id, meter))
        except AggregateNotFoundError:
            return None
        return override if isinstance(override, QuotaOverride) else None


RACES = 20  # a meter named by many tenants' overrides at once: each may lose to every other once


def _retried(attempt: Callable[[], T], conflict: str) -> T:
    """`attempt` (read, decide, save) again while its save loses a race (the event store's optimistic
    concurrency), after a short random pause that spreads the contenders, up to RACES times; then 409.
    Commands run in worker threads: the pause holds no event loop."""
    for tries in range(RACES):
        try:
            return attempt()
        except IntegrityError:
            time.sleep(random.uniform(0, 0.002 * (tries + 1)))
    raise Conflict(conflict)


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The log's type, tenant and data for a plan or quota event; None for any other event."""
    kind = type(domain_event).__qualname__
    match kind:
        case "Plan.Published":
            return "omni.plan.published", PLATFORM, {"slug": domain_event.slug, "version": 1, **domain_event.body}
        case "Plan.Revised":
            data = {"slug": domain_event.slug, "version": domain_event.plan_version, **domain_event.body}
            return "omni.plan.published", PLATFORM, data
        case "Tenant.PlanAssigned":
            return (
                "omni.tenant.plan_assigned",
                domain_event.tenant_id,
                {"tenant_id": domain_event.tenant_id, "plan": domain_event.plan},
            )
        case "QuotaOverride.Set" | "QuotaOverride.Changed":
            data = {"tenant_id": domain_event.tenant_id, "meter": domain_event.meter, "entitlement": domain_event.entitlement}
            return "omni.quota.override_set", domain_event.tenant_id, data
        case "QuotaOverride.Removed":
            data = {"tenant_id": domain_event.tenant_id, "meter": domain_event.meter}
            return "omni.quota.override_removed", domain_event.tenant_id, data
    return None
