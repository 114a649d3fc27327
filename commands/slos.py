"""SLO definitions: a control-plane aggregate per (owner, name) in the event store.

The owner is the tenant whose key defined it (the SLO covers that tenant's events) or `_platform`
for the admin's (every tenant's events). An SLO is defined at version 1 and revised to the next
version by each change; each version is folded from the start of the log (projections.slos). Each
change is saved with its audit entry and relayed by the outbox as `omni.slo.defined`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from commands.errors import Conflict
from commands.ids import OMNI_NAMESPACE
from schemas.slos import SloBody

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane

PLATFORM = "_platform"
SLO_DEFINED = "omni.slo.defined"


def slo_aggregate_id(owner: str, name: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"slo:{owner}:{name}")


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

    @event("Revised")
    def revise(self, owner: str, name: str, slo_version: int, spec: dict[str, Any]) -> None:
        """The event names the SLO and its new version, so readers of the log need nothing else."""
        self.spec = spec
        self.slo_version = slo_version


class SloCommands:
    """The SLO commands of the ControlPlane application (mixed into it)."""

    def put_slo(self: ControlPlane, ctx: CommandContext, name: str, body: SloBody) -> tuple[Slo, bool]:
        """Define an SLO, or revise it when the body differs; returns the SLO and whether it is new.
        The owner is the caller's tenant, or `_platform` for the admin (ctx.tenant_id None)."""
        owner = ctx.tenant_id or PLATFORM
        resource = f"slos/{name}"
        with self._rejections_audited(ctx, "slo.put", resource):
            spec = body.stored()
            slo = self.get_slo(owner, name)
            created = slo is None
            if slo is None:
                slo = Slo(owner=owner, name=name, spec=spec)
            elif slo.spec != spec:
                slo.revise(owner=owner, name=name, slo_version=slo.slo_version + 1, spec=spec)
            try:
                self.save(slo, self._audit(ctx, "slo.put", resource, owner))
            except IntegrityError as race:
                raise Conflict(f"SLO {name!r} changed concurrently; retry") from race
        return slo, created

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
    return None
