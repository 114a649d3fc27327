"""SLO definitions: a control-plane aggregate per (owner, name) in the event store.

The owner is the tenant whose key defined it (the SLO covers that tenant's events) or `_platform`
for the admin's (every tenant's events). An SLO is defined at version 1 and revised to the next
version by each change; each version is folded from the start of the log (projections.slos). Each
change is saved with its audit entry and relayed by the outbox as `omni.slo.defined`. Deleting an
SLO (`omni.slo.deleted`) ends its version; defined again, the name is the next version, folded
afresh.

Since every version is caught up from the whole shared log, an owner defines at most
`limits.slos_per_owner` SLOs (counted by a SloNames aggregate per owner, saved with each new SLO)
and each SLO is revised at most `limits.slo_revisions_per_hour` times in any hour. A deleted SLO
keeps its place in the count for an hour (REVISION_SPAN): deleting and defining under new names in
a loop would otherwise fold the whole log again without bound. Put again, its own name takes its
place back at once (a revision of it, counted as one).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from commands.errors import Conflict, LimitReached, NotFound, TooSoon
from commands.ids import OMNI_NAMESPACE
from commands.limits import ATTEMPTS
from schemas.envelope import format_time
from schemas.slos import SloBody

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane

PLATFORM = "_platform"
SLO_DEFINED, SLO_DELETED = "omni.slo.defined", "omni.slo.deleted"
SLO_NAMES_OPENED, SLO_NAME_ADDED = "omni.slo.names_opened", "omni.slo.name_added"
SLO_NAME_REMOVED = "omni.slo.name_removed"
REVISION_SPAN = timedelta(hours=1)


def slo_aggregate_id(owner: str, name: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"slo:{owner}:{name}")


def slo_names_aggregate_id(owner: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"slo-names:{owner}")


class Slo(Aggregate):
    @staticmethod
    def create_id(owner: str, name: str, spec: dict[str, Any]) -> UUID:
        return slo_aggregate_id(owner, name)

    @event("Defined")
    def __init__(self, owner: str, name: str, spec: dict[str, Any]) -> None:
        self.owner = owner
        self.name = name
        self.spec = spec
        self.slo_version = 1
        self.deleted = False

    @event("Revised")
    def revise(self, owner: str, name: str, slo_version: int, spec: dict[str, Any]) -> None:
        """The event names the SLO and its new version, so readers of the log need nothing else. A
        deleted SLO defined again is revised to the next version too."""
        self.spec = spec
        self.slo_version = slo_version
        self.deleted = False

    @event("Deleted")
    def delete(self, owner: str, name: str, slo_version: int) -> None:
        """`slo_version`: the version that ends (its fold, alerts and metrics with it)."""
        self.deleted = True


class SloNames(Aggregate):
    """The names of one owner's SLOs, which its limit counts. A new SLO is saved with this aggregate's
    next version, so of two new SLOs of one owner stored at once one is redone on what the other
    left (the event store's optimistic concurrency): the owner never passes its limit."""

    @staticmethod
    def create_id(owner: str, names: list[str]) -> UUID:
        return slo_names_aggregate_id(owner)

    @event("Opened")
    def __init__(self, owner: str, names: list[str]) -> None:
        """`names`: the owner's SLOs defined before this count began (by an earlier version of Omni)."""
        self.owner = owner
        self.names = list(names)
        self.removed: dict[str, str] = {}  # deleted within the hour before the latest removal: name -> when

    @event("Added")
    def add(self, owner: str, name: str) -> None:
        self.names.append(name)
        self.removed.pop(name, None)

    @event("Removed")
    def remove(self, owner: str, name: str, at: str) -> None:
        """`at` (RFC 3339): when it was deleted; the name keeps its place in the count for an hour."""
        self.names.remove(name)
        since = datetime.fromisoformat(at) - REVISION_SPAN
        self.removed = {n: t for n, t in self.removed.items() if datetime.fromisoformat(t) > since} | {name: at}

    def held(self, now: datetime) -> list[str]:
        """The names counted against the owner's limit now: its SLOs, and those deleted within the hour."""
        recent = [n for n, at in self.removed.items() if datetime.fromisoformat(at) > now - REVISION_SPAN]
        return self.names + recent


class SloCommands:
    """The SLO commands of the ControlPlane application (mixed into it)."""

    def put_slo(self: ControlPlane, ctx: CommandContext, name: str, body: SloBody) -> tuple[Slo, bool]:
        """Define an SLO, or revise it when the body differs; returns the SLO and whether it is new.
        The owner is the caller's tenant, or `_platform` for the admin (ctx.tenant_id None). A new
        SLO past the owner's limit is refused (409), and so is a revision past the SLO's revisions in
        the last hour (429)."""
        owner = ctx.tenant_id or PLATFORM
        resource = f"slos/{name}"
        with self._rejections_audited(ctx, "slo.put", resource):
            spec = body.stored()
            for _ in range(ATTEMPTS):
                slo = self.get_slo(owner, name)
                created = slo is None or slo.deleted
                changed: list[Aggregate] = []
                if created:
                    names = self._slo_names(owner)
                    if name not in names.names:
                        if name not in names.removed:  # a name deleted within the hour holds its own place
                            self._check_slo_count(owner, names)
                        names.add(owner=owner, name=name)
                    if slo is None:
                        slo = Slo(owner=owner, name=name, spec=spec)
                    else:  # deleted: defined again as its next version, counted as a revision
                        self._check_slo_revisions(owner, name)
                        slo.revise(owner=owner, name=name, slo_version=slo.slo_version + 1, spec=spec)
                    changed = [slo, names]
                elif slo.spec != spec:
                    self._check_slo_revisions(owner, name)
                    slo.revise(owner=owner, name=name, slo_version=slo.slo_version + 1, spec=spec)
                    changed = [slo]
                try:
                    self.save(*changed, self._audit(ctx, "slo.put", resource, owner))
                except IntegrityError:
                    continue  # another command of this owner was stored first: decide again on what it left
                return slo, created
            raise Conflict(f"SLO {name!r} changed concurrently; retry")

    def delete_slo(self: ControlPlane, ctx: CommandContext, name: str) -> None:
        """Delete one of the caller's SLOs: its version is no longer folded, read or alerted on, and its
        name leaves the owner's count an hour later (SloNames.held). 404 for a name the owner has not
        defined, or deleted already."""
        owner = ctx.tenant_id or PLATFORM
        resource = f"slos/{name}"
        with self._rejections_audited(ctx, "slo.delete", resource):
            for _ in range(ATTEMPTS):
                slo = self.get_slo(owner, name)
                if slo is None or slo.deleted:
                    raise NotFound(f"SLO {name!r} not found")
                slo.delete(owner=owner, name=name, slo_version=slo.slo_version)
                names = self._slo_names(owner)
                if name in names.names:
                    names.remove(owner=owner, name=name, at=format_time(datetime.now(UTC)))
                try:
                    self.save(slo, names, self._audit(ctx, "slo.delete", resource, owner))
                except IntegrityError:
                    continue  # another command of this owner was stored first: decide again on what it left
                return
            raise Conflict(f"SLO {name!r} changed concurrently; retry")

    def _slo_names(self: ControlPlane, owner: str) -> SloNames:
        """The owner's SLO names; opened (unsaved) from the views for an owner that has none in the event
        store yet: its SLOs then, if any, were defined before this count began."""
        names = self.stored(slo_names_aggregate_id(owner), SloNames)
        if names is None:
            earlier = self.views_slo_names(owner) if self.views_slo_names is not None else []
            return SloNames(owner=owner, names=sorted(earlier))
        return names

    def _check_slo_count(self: ControlPlane, owner: str, names: SloNames) -> None:
        limit = self.limits.slos_per_owner
        held = names.held(datetime.now(UTC))
        if len(held) >= limit:
            who = "The platform" if owner == PLATFORM else "This tenant"
            deleted = len(held) - len(names.names)
            recently = f" ({deleted} of them deleted within the hour, which keep their place for an hour)" if deleted else ""
            raise LimitReached(
                f"{who} has {len(held)} SLOs{recently}, the most it may define (OMNI_MAX_SLOS_PER_TENANT = {limit}): "
                "each is folded from the whole log. Revise one of them instead, or delete one (its place is free an "
                "hour after; its own name may be put again at once).",
                kind="slo-limit-reached",
                limit=limit,
            )

    def _check_slo_revisions(self: ControlPlane, owner: str, name: str) -> None:
        """At most `limits.slo_revisions_per_hour` revisions of one SLO in any hour (each version is
        folded afresh from the whole log): read from the SLO's latest events alone."""
        limit = self.limits.slo_revisions_per_hour
        # A deletion may come between two revisions (a deleted SLO put again is a revision): the
        # latest `limit` revisions are among its latest 2 x `limit` events.
        latest = self.repository.event_store.get(slo_aggregate_id(owner, name), desc=True, limit=2 * limit)
        revisions = [e.timestamp for e in latest if isinstance(e, Slo.Revised)][:limit]
        if len(revisions) < limit:
            return
        wait = (min(revisions) + REVISION_SPAN - datetime.now(UTC)).total_seconds()
        if wait > 0:
            raise TooSoon(
                f"SLO {name!r} was revised {limit} times in the last hour, the most it may be "
                f"(OMNI_SLO_REVISIONS_PER_HOUR = {limit}): each version is folded from the whole log. "
                f"Revise it again in {math.ceil(wait)} s.",
                kind="slo-revised-too-often",
                retry_after=math.ceil(wait),
            )

    def get_slo(self: ControlPlane, owner: str, name: str) -> Slo | None:
        try:
            slo: object = self.repository.get(slo_aggregate_id(owner, name))
        except AggregateNotFoundError:
            return None
        return slo if isinstance(slo, Slo) else None


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The log's type, tenant and data for an SLO event; None for any other event."""
    match type(domain_event).__qualname__:
        case "Slo.Defined":
            owner, name = domain_event.owner, domain_event.name
            return SLO_DEFINED, owner, {"owner": owner, "name": name, "version": 1, "definition": domain_event.spec}
        case "Slo.Revised":
            owner, name = domain_event.owner, domain_event.name
            data = {"owner": owner, "name": name, "version": domain_event.slo_version, "definition": domain_event.spec}
            return SLO_DEFINED, owner, data
        case "Slo.Deleted":
            owner, name = domain_event.owner, domain_event.name
            return SLO_DELETED, owner, {"owner": owner, "name": name, "version": domain_event.slo_version}
        case "SloNames.Opened":
            return SLO_NAMES_OPENED, domain_event.owner, {"owner": domain_event.owner, "names": domain_event.names}
        case "SloNames.Added":
            return SLO_NAME_ADDED, domain_event.owner, {"owner": domain_event.owner, "name": domain_event.name}
        case "SloNames.Removed":
            data = {"owner": domain_event.owner, "name": domain_event.name, "at": domain_event.at}
            return SLO_NAME_REMOVED, domain_event.owner, data
    return None
