"""A meter's life after its definition: its description changed, and its deletion.

What a meter counts (its event type, aggregation, value and dimensions) never changes under its
slug: its views, quotas and invoices were counted by that definition. To count differently, define
another slug (it covers the whole history too). Its description may change at any time.

A meter is deleted for good: its views are dropped, the folds stop counting it, and its slug is
never defined again (a new definition under it would meet counters and invoices of the old one). A
meter that a plan (any of its versions: invoices are priced by the version of their month) or a
tenant's override names cannot be deleted: 409 `meter-in-use`, naming them. Who names a meter is
recorded on the meter itself, saved with the plan or override that names it (or stops naming it:
an override removed, a plan's next version without it, if no version of that plan priced it), so a
deletion and a plan racing it cannot both be saved (the event store's optimistic concurrency); plans
and overrides from before that record are read from the views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from commands.errors import Conflict, NotFound
from commands.ids import meter_aggregate_id
from projections.catalog import METER_DELETED, METER_DESCRIBED
from schemas.meters import MeterDefinition

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane, Meter

PLATFORM = "_platform"
# Folded by nothing: who names a meter, which its deletion checks, is read from the event store.
NAMED, UNNAMED = "omni.meter.named", "omni.meter.unnamed"


def plan_user(plan: str) -> str:
    """How a plan is named among a meter's users."""
    return f"plan:{plan}"


def override_user(tenant_id: str) -> str:
    """How a tenant's quota override is named among a meter's users."""
    return f"override:{tenant_id}"


def stored_meter(control: ControlPlane, slug: str) -> Meter | None:
    """The meter's aggregate, unless it was never defined or was deleted."""
    from commands.control_plane import Meter

    try:
        meter: object = control.repository.get(meter_aggregate_id(slug))
    except AggregateNotFoundError:
        return None
    if not isinstance(meter, Meter) or meter.deleted:
        return None
    return meter


class MeterCommands:
    """The meter commands after its definition, of the ControlPlane application (mixed into it)."""

    def describe_meter(self: ControlPlane, ctx: CommandContext, slug: str, description: str | None) -> MeterDefinition:
        """Set the meter's description (None: none); the same one again changes nothing."""
        resource = f"meters/{slug}"
        with self._rejections_audited(ctx, "meter.describe", resource):
            meter = stored_meter(self, slug)
            if meter is None:
                raise NotFound(f"meter {slug!r} not found")
            if meter.definition.get("description") != description:
                meter.set_description(slug=slug, description=description)
            try:
                self.save(meter, self._audit(ctx, "meter.describe", resource, PLATFORM))
            except IntegrityError as race:
                raise Conflict(f"meter {slug!r} changed concurrently; retry") from race
            return MeterDefinition.model_validate(meter.definition)

    def delete_meter(self: ControlPlane, ctx: CommandContext, slug: str) -> None:
        resource = f"meters/{slug}"
        with self._rejections_audited(ctx, "meter.delete", resource):
            meter = stored_meter(self, slug)
            if meter is None:
                raise NotFound(f"meter {slug!r} not found")
            earlier = self.views_meter_users(slug) if self.views_meter_users is not None else []
            users = sorted({*meter.users, *earlier})
            if users:
                raise Conflict(
                    f"meter {slug!r} is named by {', '.join(users)}: a meter that plans or overrides count cannot be "
                    "deleted (invoices are priced by every version of a plan)",
                    kind="meter-in-use",
                    members={"used_by": users},
                )
            meter.delete(slug=slug)
            try:
                self.save(meter, self._audit(ctx, "meter.delete", resource, PLATFORM))
            except IntegrityError as race:
                raise Conflict(f"meter {slug!r} changed concurrently (a plan may have named it); retry") from race


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The log's type, tenant and data for a meter's later events; None for any other event."""
    match type(domain_event).__qualname__:
        case "Meter.Described":
            return METER_DESCRIBED, PLATFORM, {"slug": domain_event.slug, "description": domain_event.description}
        case "Meter.Deleted":
            return METER_DELETED, PLATFORM, {"slug": domain_event.slug}
        case "Meter.Named":
            return NAMED, PLATFORM, {"slug": domain_event.slug, "user": domain_event.user}
        case "Meter.Unnamed":
            return UNNAMED, PLATFORM, {"slug": domain_event.slug, "user": domain_event.user}
    return None
