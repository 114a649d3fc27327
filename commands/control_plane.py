"""Control-plane aggregates (tenants, API keys, meters) in the eventsourcing event store.

Each decision is a method on an aggregate guarded by a `check_*`; the event
store's optimistic concurrency turns a lost race into a Conflict.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError, Recording

from commands import billing, gdpr, meters, notices, plans, slos, stripe_sync, suspensions, webhooks
from commands.errors import Conflict, Invalid, LimitReached, NotFound, Rejected, status_of
from commands.ids import key_aggregate_id, key_ring_aggregate_id, meter_aggregate_id
from commands.limits import ATTEMPTS, Limits
from commands.refusals import kept_resource, refusal_reason
from schemas.gdpr import sealed_value_read
from schemas.ids import canonical_uuid
from schemas.meters import MeterDefinition

KEY_PREFIX = "omni"
PLATFORM = "_platform"
AUDIT_TYPE = "omni.audit.recorded"
A = TypeVar("A", bound=Aggregate)
KEY_RING_SNAPSHOT_EVERY = 100
KEY_RING_OPENED, KEY_RING_ADDED, KEY_RING_REMOVED = "omni.key_ring.opened", "omni.key_ring.added", "omni.key_ring.removed"


def hash_secret(secret: str) -> str:
    # The secret has 256 bits of entropy, so a fast hash is as good as a slow one here.
    return hashlib.sha256(secret.encode()).hexdigest()


class Tenant(Aggregate):
    @event("Created")
    def __init__(self, name: str, plan: str) -> None:
        self.name = name
        self.plan = plan
        self.suspension: str | None = None  # the reason, while suspended (commands.suspensions)
        self.suspended_at: str | None = None

    @event("PlanAssigned")
    def assign_plan(self, tenant_id: str, plan: str) -> None:
        """The event names the tenant so readers of the log need nothing else."""
        self.plan = plan

    @event("Suspended")
    def suspend(self, tenant_id: str, reason: str, notice_id: str, at: str) -> None:
        """`notice_id`: the id of the notice that tells the tenant (commands.suspensions); `at`: RFC 3339."""
        self.suspension = reason
        self.suspended_at = at

    @event("Resumed")
    def resume(self, tenant_id: str, notice_id: str, at: str) -> None:
        self.suspension = None
        self.suspended_at = None


class ApiKey(Aggregate):
    @staticmethod
    def create_id(key_id: str, tenant_id: str, secret_hash: str, label: str | None) -> UUID:
        return key_aggregate_id(key_id)

    @event("Issued")
    def __init__(self, key_id: str, tenant_id: str, secret_hash: str, label: str | None) -> None:
        self.key_id = key_id
        self.tenant_id = tenant_id
        self.secret_hash = secret_hash
        self.label = label
        self.revoked = False

    @event("Revoked")
    def revoke(self, key_id: str, tenant_id: str) -> None:
        """The event names the key and tenant so readers of the log need nothing else."""
        self.revoked = True


class KeyRing(Aggregate):
    """A tenant's API keys not revoked, which its limit counts. A key issued or revoked is saved with
    this aggregate's next version, so of two issued at once one is redone on what the other left
    (the event store's optimistic concurrency): the tenant never passes its limit."""

    @staticmethod
    def create_id(tenant_id: str, key_ids: list[str]) -> UUID:
        return key_ring_aggregate_id(tenant_id)

    @event("Opened")
    def __init__(self, tenant_id: str, key_ids: list[str]) -> None:
        """`key_ids`: its first key's, or for a tenant from before the count began its active keys then."""
        self.tenant_id = tenant_id
        self.key_ids = list(key_ids)

    @event("KeyAdded")
    def add(self, tenant_id: str, key_id: str) -> None:
        self.key_ids.append(key_id)

    @event("KeyRemoved")
    def remove(self, tenant_id: str, key_id: str) -> None:
        self.key_ids.remove(key_id)


class Meter(Aggregate):
    @staticmethod
    def create_id(slug: str, definition: dict[str, Any]) -> UUID:
        return meter_aggregate_id(slug)

    @event("Defined")
    def __init__(self, slug: str, definition: dict[str, Any]) -> None:
        self.slug = slug
        self.definition = definition
        self.users: list[str] = []  # who named it (commands.meters.meter_user): it cannot be deleted then
        self.deleted = False

    @event("Described")
    def set_description(self, slug: str, description: str | None) -> None:
        """Only the description: what a meter counts never changes under its slug."""
        self.definition = {**self.definition, "description": description}

    @event("Named")
    def name_by(self, slug: str, user: str) -> None:
        """A plan or an override named it (saved with that change, so a deletion racing it loses)."""
        self.users.append(user)

    @event("Unnamed")
    def unname_by(self, slug: str, user: str) -> None:
        """That plan or override no longer names it (a plan that ever priced it still does)."""
        self.users.remove(user)

    @event("Deleted")
    def delete(self, slug: str) -> None:
        """For good: its views are dropped, and its slug is never defined again."""
        self.deleted = True


class AuditEntry(Aggregate):
    """One command, accepted or rejected: stored with the command's own events, in one save."""

    @event("Recorded")
    def __init__(
        self,
        tenant_id: str,
        action: str,
        resource: str,
        outcome: str,
        reason: str | None,
        actor_key_id: str | None,
        actor_ip: str | dict[str, Any] | None,  # a sealed value (schemas.gdpr), or text in entries from before
        user_agent: str | dict[str, Any] | None,
        trace_id: str | None,
    ) -> None:
        self.tenant_id = tenant_id
        self.action = action
        self.outcome = outcome


# (chain, actor's key id, ip, user agent) -> the ip and user agent as the chain keeps them: sealed
# under the data key of the actor as a data subject of that chain (README, "GDPR").
ActorSealer = Callable[[str, str | None, str | None, str | None], tuple[Any, Any]]


ACTOR_PREFIX = "apikey:"


# Events relayed to topics the catalog does not fold: a command's reads wait for none of them.
UNFOLDED_BY_CATALOG = (AuditEntry.Recorded, notices.Notice.Emitted)


def actor_subject(key_id: str | None) -> str:
    """The data subject an actor is in its chain's tenant: its API key (`apikey:<key id>`)."""
    return f"{ACTOR_PREFIX}{key_id or '-'}"


def storable(text: str) -> str:
    """Text as the views can keep it: a NUL character (PostgreSQL text holds none; only a path's
    `%00` brings one into an entry, in its resource and in the reason naming it) written as `%00`.
    An entry holding one was dead-lettered by the audit fold, and its refusal missing from the chain."""
    return text.replace("\x00", "%00")


def audit_entry(
    ctx: CommandContext,
    action: str,
    resource: str,
    tenant_id: str,
    *,
    outcome: str = "accepted",
    reason: str | None = None,
    seal: ActorSealer | None = None,
) -> AuditEntry:
    """The audit entry of a command, in the chain of the caller's tenant (or of `tenant_id` for the
    admin's and the platform's own commands), its actor's IP address and user agent sealed by `seal`."""
    chain = ctx.tenant_id or tenant_id
    ip, user_agent = ctx.ip, ctx.user_agent
    if seal is not None and (ip is not None or user_agent is not None):
        ip, user_agent = seal(chain, ctx.key_id, ip, user_agent)
    return AuditEntry(
        tenant_id=chain,
        action=action,
        resource=storable(resource),
        outcome=outcome,
        reason=None if reason is None else storable(reason),
        actor_key_id=ctx.key_id,
        actor_ip=ip,
        user_agent=user_agent,
        trace_id=ctx.trace_id,
    )


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Who issued a command and from where; every audit entry carries it."""

    tenant_id: str | None = None
    key_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    tenant_id: str
    token: str  # shown once, stored only as a hash


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant's key, or the platform admin."""

    tenant_id: str | None
    key_id: str | None
    is_admin: bool = False


def parse_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class ControlPlane(
    meters.MeterCommands,
    plans.PlanCommands,
    suspensions.SuspensionCommands,
    billing.BillingCommands,
    stripe_sync.StripeCommands,
    slos.SloCommands,
    gdpr.GdprCommands,
    webhooks.WebhookCommands,
    Application[UUID],
):
    """Tenants, keys, meters, plans and quota overrides: the decisions that need invariants.

    Every command saves an AuditEntry: with its events when accepted (one
    atomic save), alone when rejected.
    """

    name = "omni_control"
    # A key ring keeps every key issued and revoked: loaded whole, a tenant issuing and revoking in a
    # loop would make each of its key commands slower. A snapshot every KEY_RING_SNAPSHOT_EVERY
    # versions bounds what a load replays (snapshots are a cache beside the events: the outbox and
    # the notification log never see them).
    snapshotting_intervals: ClassVar[dict[type[Aggregate], int]] = {  # type: ignore[misc]
        KeyRing: KEY_RING_SNAPSHOT_EVERY,
        webhooks.WebhookEndpoints: KEY_RING_SNAPSHOT_EVERY,  # likewise: every endpoint ever added and deleted
        slos.SloNames: KEY_RING_SNAPSHOT_EVERY,  # likewise: every SLO name ever added and deleted
        Meter: KEY_RING_SNAPSHOT_EVERY,  # likewise: every plan and override that ever named it
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._saved = threading.local()  # commands run in worker threads, one at a time each
        # Seals the actor's IP address and user agent for the audit trail (omni.personal_data); None:
        # kept as given (tools that record no commands from the network).
        self.seal_actor: ActorSealer | None = None
        # What one owner may hold (commands.limits; omni.bootstrap sets them from the settings).
        self.limits = Limits()
        # An owner's SLO names as the views hold them, read once, when its SLOs are first counted in the
        # event store (they were defined before the count began); None: no views (tools, tests).
        self.views_slo_names: Callable[[str], list[str]] | None = None
        # Likewise a tenant's active API keys, for a tenant created before its keys were counted.
        self.views_active_keys: Callable[[str], list[str]] | None = None
        # Who names a meter as the views hold it (plans and overrides from before names were recorded
        # on the meter), checked with the meter's own before it is deleted; None: no views (tools, tests).
        self.views_meter_users: Callable[[str], list[str]] | None = None
        # Seals webhook endpoints' signing secrets (the master key, omni.personal_data); None: no
        # endpoint can be created (tools, tests of other commands).
        self.secret_box: webhooks.SecretBox | None = None

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Store, and remember in this thread the store position of the last event that changes a view
        (audit entries and notices go to topics of their own, not the catalog's): the caller's reads wait for it."""
        recordings = super().save(*objs, **kwargs)
        positions = [r.notification.id for r in recordings if not isinstance(r.domain_event, UNFOLDED_BY_CATALOG)]
        if positions:
            self._saved.position = max(positions)
        return recordings

    def take_saved_position(self) -> int | None:
        """The position remembered by this thread's last save (see `save`), once; None if it changed no view."""
        position: int | None = getattr(self._saved, "position", None)
        self._saved.position = None
        return position

    def create_tenant(self, ctx: CommandContext, name: str, plan: str) -> tuple[Tenant, IssuedKey]:
        tenant = Tenant(name=name, plan=plan)
        key, issued = self._new_key(str(tenant.id), label="default")
        ring = KeyRing(tenant_id=str(tenant.id), key_ids=[issued.key_id])
        self.save(tenant, key, ring, self._audit(ctx, "tenant.create", f"tenants/{tenant.id}", str(tenant.id)))
        return tenant, issued

    def get_tenant(self, tenant_id: str) -> Tenant:
        canonical = canonical_uuid(tenant_id)
        if canonical is None:
            raise NotFound(f"tenant {tenant_id} not found")
        try:
            tenant: object = self.repository.get(UUID(canonical))
        except AggregateNotFoundError as missing:
            raise NotFound(f"tenant {tenant_id} not found") from missing
        if not isinstance(tenant, Tenant):
            raise NotFound(f"tenant {tenant_id} not found")
        return tenant

    def issue_key(self, ctx: CommandContext, tenant_id: str, label: str | None = None) -> IssuedKey:
        """Issue another key; refused (409) when the tenant holds `limits.keys_per_tenant` active keys."""
        resource = f"tenants/{tenant_id}/keys"
        with self._rejections_audited(ctx, "api_key.issue", resource):
            if ctx.tenant_id is not None and ctx.tenant_id != canonical_uuid(tenant_id):
                raise NotFound(f"tenant {tenant_id} not found")
            # The key names the tenant in its one canonical spelling: any other (upper case, braces,
            # no hyphens) would make a key whose usage no view of the tenant ever shows.
            tenant_id = str(self.get_tenant(tenant_id).id)
            for _ in range(ATTEMPTS):
                ring = self._key_ring(tenant_id)
                limit = self.limits.keys_per_tenant
                if len(ring.key_ids) >= limit:
                    raise LimitReached(
                        f"Tenant {tenant_id} has {len(ring.key_ids)} active API keys, the most it may hold "
                        f"(OMNI_MAX_KEYS_PER_TENANT = {limit}): revoke one first.",
                        kind="key-limit-reached",
                        limit=limit,
                    )
                key, issued = self._new_key(tenant_id, label)
                ring.add(tenant_id=tenant_id, key_id=issued.key_id)
                try:
                    self.save(key, ring, self._audit(ctx, "api_key.issue", f"keys/{issued.key_id}", tenant_id))
                except IntegrityError:
                    continue  # another key of this tenant was issued or revoked first: count again
                return issued
            raise Conflict(f"the keys of tenant {tenant_id} changed concurrently; retry")

    def revoke_key(self, ctx: CommandContext, key_id: str) -> None:
        """Revoke a key. A tenant may only revoke its own; revoking twice changes nothing."""
        resource = f"keys/{key_id}"
        with self._rejections_audited(ctx, "api_key.revoke", resource):
            for _ in range(ATTEMPTS):
                key = self._get_key(key_id)
                if key is None or (ctx.tenant_id is not None and key.tenant_id != ctx.tenant_id):
                    raise NotFound(f"key {key_id} not found")
                changed: list[Aggregate] = [key]
                if not key.revoked:
                    key.revoke(key_id=key.key_id, tenant_id=key.tenant_id)
                    ring = self._stored_key_ring(key.tenant_id)
                    if ring is not None and key.key_id in ring.key_ids:
                        ring.remove(tenant_id=key.tenant_id, key_id=key.key_id)
                        changed.append(ring)
                try:
                    self.save(*changed, self._audit(ctx, "api_key.revoke", resource, key.tenant_id))
                except IntegrityError:
                    continue  # revoked, or another key of the tenant changed, meanwhile: decide again
                return
            raise Conflict(f"key {key_id} changed concurrently; retry")

    def define_meter(self, ctx: CommandContext, definition: MeterDefinition) -> Meter:
        resource = f"meters/{definition.slug}"
        with self._rejections_audited(ctx, "meter.define", resource):
            data_class = self.get_data_class(definition.event_type)
            if data_class is not None and (why := sealed_value_read(data_class.spec["personal"], definition)) is not None:
                raise Invalid(
                    why, [{"location": "body.value_property", "reason": why}], title="Invalid meter", kind="invalid-meter"
                )
            meter = Meter(slug=definition.slug, definition=definition.model_dump(mode="json"))
            try:
                self.save(meter, self._audit(ctx, "meter.define", resource, PLATFORM))
            except IntegrityError as taken:
                if meters.stored_meter(self, definition.slug) is None:  # deleted: its slug is retired
                    raise Conflict(
                        f"meter {definition.slug!r} was deleted, and a deleted meter's slug is not defined again "
                        "(its usage was counted by another definition); define it under another slug",
                        kind="meter-deleted",
                    ) from taken
                raise Conflict(f"meter {definition.slug!r} is already defined") from taken
        return meter

    def record_notice(self, notice: notices.Notice) -> bool:
        """Store a notice the folds found; False if it was recorded before (its id is deterministic)."""
        try:
            self.save(notice)
        except IntegrityError:
            return False
        return True

    def record_rejection(self, ctx: CommandContext, action: str, resource: str, reason: str) -> None:
        """For commands refused before reaching an aggregate (bad input, no permission)."""
        self.save(self._audit(ctx, action, resource, ctx.tenant_id or PLATFORM, outcome="rejected", reason=reason))

    def record_action(self, ctx: CommandContext, action: str, resource: str) -> None:
        """For accepted actions that change no aggregate (an admin starting a replay): their audit entry alone."""
        self.save(self._audit(ctx, action, resource, ctx.tenant_id or PLATFORM))

    def authenticate(self, token: str) -> Principal | None:
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        key = self._get_key(key_id)
        if key is None or key.revoked:
            return None
        if not hmac.compare_digest(key.secret_hash, hash_secret(secret)):
            return None
        return Principal(tenant_id=key.tenant_id, key_id=key.key_id)

    @contextmanager
    def _rejections_audited(self, ctx: CommandContext, action: str, resource: str) -> Iterator[None]:
        try:
            yield
        except Rejected as refused:
            status, title = status_of(refused)
            errors: list[dict[str, object]] = getattr(refused, "errors", [])
            places = [(str(error.get("location", "request")), None) for error in errors]
            reason = refusal_reason(status, title, kind=getattr(refused, "kind", None), places=places)
            self.record_rejection(ctx, action, kept_resource(resource), reason)
            refused.audited = True
            raise

    def _audit(
        self,
        ctx: CommandContext,
        action: str,
        resource: str,
        tenant_id: str,
        *,
        outcome: str = "accepted",
        reason: str | None = None,
    ) -> AuditEntry:
        return audit_entry(ctx, action, resource, tenant_id, outcome=outcome, reason=reason, seal=self.seal_actor)

    def stored(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        """The aggregate stored under `aggregate_id` if it is a `kind`, else None."""
        try:
            found: object = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, kind) else None

    def _get_key(self, key_id: str) -> ApiKey | None:
        return self.stored(key_aggregate_id(key_id), ApiKey)

    def _stored_key_ring(self, tenant_id: str) -> KeyRing | None:
        return self.stored(key_ring_aggregate_id(tenant_id), KeyRing)

    def _key_ring(self, tenant_id: str) -> KeyRing:
        """The tenant's active keys; opened (unsaved) from the views for a tenant created before its keys
        were counted in the event store."""
        ring = self._stored_key_ring(tenant_id)
        if ring is None:
            earlier = self.views_active_keys(tenant_id) if self.views_active_keys is not None else []
            ring = KeyRing(tenant_id=tenant_id, key_ids=earlier)
        return ring

    @staticmethod
    def _new_key(tenant_id: str, label: str | None) -> tuple[ApiKey, IssuedKey]:
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(key_id=key_id, tenant_id=tenant_id, secret_hash=hash_secret(secret), label=label)
        return key, IssuedKey(key_id=key_id, tenant_id=tenant_id, token=f"{KEY_PREFIX}_{key_id}_{secret}")


# What the outbox relay publishes for each stored event: log type, tenant, payload.
def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]]:
    described = plans.describe(domain_event) or billing.describe(domain_event) or notices.describe(domain_event)
    described = described or stripe_sync.describe(domain_event) or slos.describe(domain_event) or gdpr.describe(domain_event)
    described = described or webhooks.describe(domain_event) or suspensions.describe(domain_event)
    described = described or meters.describe(domain_event)
    if described is not None:
        return described
    kind = type(domain_event).__qualname__  # e.g. "Tenant.Created"
    match kind:
        case "Tenant.Created":
            tenant = str(domain_event.originator_id)
            return "omni.tenant.created", tenant, {"tenant_id": tenant, "name": domain_event.name, "plan": domain_event.plan}
        case "ApiKey.Issued":
            return (
                "omni.api_key.issued",
                domain_event.tenant_id,
                {
                    "key_id": domain_event.key_id,
                    "tenant_id": domain_event.tenant_id,
                    "label": domain_event.label,
                },
            )
        case "ApiKey.Revoked":
            return (
                "omni.api_key.revoked",
                domain_event.tenant_id,
                {
                    "key_id": domain_event.key_id,
                    "tenant_id": domain_event.tenant_id,
                },
            )
        case "KeyRing.Opened":
            return KEY_RING_OPENED, domain_event.tenant_id, {"tenant_id": domain_event.tenant_id, "key_ids": domain_event.key_ids}
        case "KeyRing.KeyAdded":
            return KEY_RING_ADDED, domain_event.tenant_id, {"tenant_id": domain_event.tenant_id, "key_id": domain_event.key_id}
        case "KeyRing.KeyRemoved":
            return KEY_RING_REMOVED, domain_event.tenant_id, {"tenant_id": domain_event.tenant_id, "key_id": domain_event.key_id}
        case "AuditEntry.Recorded":
            return (
                AUDIT_TYPE,
                domain_event.tenant_id,
                {
                    "action": domain_event.action,
                    "resource": domain_event.resource,
                    "outcome": domain_event.outcome,
                    "reason": domain_event.reason,
                    "actor": {
                        "key_id": domain_event.actor_key_id,
                        "ip": domain_event.actor_ip,
                        "user_agent": domain_event.user_agent,
                    },
                    "trace_id": domain_event.trace_id,
                },
            )
        case "Meter.Defined":
            return "omni.meter.defined", PLATFORM, {"slug": domain_event.slug, "definition": domain_event.definition}
    return f"omni.unknown.{kind.lower()}", PLATFORM, {}
