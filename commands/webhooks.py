"""Webhook endpoints: one aggregate per owner (a tenant, or `_platform` for the admin's) holding its
endpoints, in the event store.

An endpoint is added with its signing secret sealed under the master key (SecretBox); the secret is
shown once, in the command's answer, and the event that the outbox relays to the control topic
carries neither it nor its sealed form (only the delivery loop, which reads the event store itself,
opens it). Rotating the secret stores the new one sealed the same way; the old one still signs
beside it until `previous_valid_until`, so a receiver can switch over without losing a delivery.
Adding an endpoint and removing one are saved on the owner's aggregate with their audit
entry: of two added at once one is redone on what the other left (optimistic concurrency), so an
owner never holds more than `limits.webhook_endpoints_per_owner`.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from commands.errors import Conflict, Invalid, LimitReached, NotFound
from commands.ids import OMNI_NAMESPACE
from commands.limits import ATTEMPTS
from projections.webhooks import ENDPOINT_CREATED, ENDPOINT_DELETED, SECRET_BYTES, SECRET_ROTATED, secret_text
from schemas.envelope import format_time
from schemas.ids import canonical_uuid

if TYPE_CHECKING:
    from commands.control_plane import CommandContext, ControlPlane

PLATFORM = "_platform"
ENDPOINTS_OPENED = "omni.webhook_endpoints.opened"


class SecretBox(Protocol):
    """Seals a secret for storage and opens it again (omni.personal_data.MasterKey)."""

    def seal_secret(self, plain: bytes, aad: bytes) -> str: ...

    def open_secret(self, sealed: str, aad: bytes) -> bytes: ...


def endpoints_aggregate_id(owner: str) -> UUID:
    return uuid5(OMNI_NAMESPACE, f"webhook-endpoints:{owner}")


def secret_aad(owner: str, endpoint_id: str) -> bytes:
    """What a sealed secret is bound to: it opens only as the secret of that endpoint of that owner."""
    return f"omni webhook secret v1:{owner}:{endpoint_id}".encode()


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    url: str
    description: str | None
    created_at: str


@dataclass(frozen=True, slots=True)
class NewEndpoint:
    endpoint: Endpoint
    secret: str  # shown once


@dataclass(frozen=True, slots=True)
class RotatedSecret:
    endpoint_id: str
    secret: str  # shown once
    previous_valid_until: str  # RFC 3339: the old secret signs beside the new one until then


class WebhookEndpoints(Aggregate):
    """One owner's webhook endpoints (those not deleted)."""

    @staticmethod
    def create_id(owner: str) -> UUID:
        return endpoints_aggregate_id(owner)

    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.endpoints: dict[str, dict[str, Any]] = {}

    @event("EndpointAdded")
    def add(self, owner: str, endpoint_id: str, url: str, description: str | None, sealed_secret: str) -> None:
        self.endpoints[endpoint_id] = {"url": url, "description": description}

    @event("EndpointRemoved")
    def remove(self, owner: str, endpoint_id: str) -> None:
        self.endpoints.pop(endpoint_id, None)

    @event("SecretRotated")
    def rotate(self, owner: str, endpoint_id: str, sealed_secret: str, previous_valid_until: str) -> None:
        """A new secret signs the endpoint's deliveries from now on; the one before it signs beside it
        until `previous_valid_until` (RFC 3339; the moment of the rotation: not at all)."""


class WebhookCommands:
    """The webhook endpoint commands of the ControlPlane application (mixed into it)."""

    def create_webhook_endpoint(self: ControlPlane, ctx: CommandContext, url: str, description: str | None) -> NewEndpoint:
        """Add an endpoint for the caller's notices (the admin's: the platform's). `url` was checked
        by the caller (schemas.webhooks); past the owner's limit: 409."""
        owner = ctx.tenant_id or PLATFORM
        resource = "webhook-endpoints"
        with self._rejections_audited(ctx, "webhook_endpoint.create", resource):
            box = self.secret_box
            if box is None:
                raise Invalid("No master key to seal the secret with.", title="Webhooks unavailable", kind="no-master-key")
            for _ in range(ATTEMPTS):
                endpoints = self.stored(endpoints_aggregate_id(owner), WebhookEndpoints) or WebhookEndpoints(owner=owner)
                limit = self.limits.webhook_endpoints_per_owner
                if len(endpoints.endpoints) >= limit:
                    who = "The platform" if owner == PLATFORM else "This tenant"
                    raise LimitReached(
                        f"{who} has {len(endpoints.endpoints)} webhook endpoints, the most it may have "
                        f"(OMNI_MAX_WEBHOOK_ENDPOINTS = {limit}): delete one first.",
                        kind="webhook-endpoint-limit-reached",
                        limit=limit,
                    )
                endpoint_id = str(uuid.uuid4())
                key = secrets.token_bytes(SECRET_BYTES)
                sealed = box.seal_secret(key, secret_aad(owner, endpoint_id))
                endpoints.add(owner=owner, endpoint_id=endpoint_id, url=url, description=description, sealed_secret=sealed)
                try:
                    self.save(endpoints, self._audit(ctx, "webhook_endpoint.create", f"webhook-endpoints/{endpoint_id}", owner))
                except IntegrityError:
                    continue  # another endpoint of this owner was added or deleted first: count again
                created_at = format_time(endpoints.modified_on)
                return NewEndpoint(Endpoint(endpoint_id, url, description, created_at), secret_text(key))
            raise Conflict("the webhook endpoints changed concurrently; retry")

    def delete_webhook_endpoint(self: ControlPlane, ctx: CommandContext, endpoint_id: str) -> None:
        """Delete one of the caller's endpoints (another owner's, or none: 404). Nothing is sent to it
        afterwards; deliveries still pending are dropped."""
        owner = ctx.tenant_id or PLATFORM
        resource = f"webhook-endpoints/{endpoint_id}"
        with self._rejections_audited(ctx, "webhook_endpoint.delete", resource):
            canonical = canonical_uuid(endpoint_id)
            for _ in range(ATTEMPTS):
                endpoints = self.stored(endpoints_aggregate_id(owner), WebhookEndpoints)
                if endpoints is None or canonical is None or canonical not in endpoints.endpoints:
                    raise NotFound(f"webhook endpoint {endpoint_id} not found")
                endpoints.remove(owner=owner, endpoint_id=canonical)
                try:
                    self.save(endpoints, self._audit(ctx, "webhook_endpoint.delete", resource, owner))
                except IntegrityError:
                    continue
                return
            raise Conflict(f"webhook endpoint {endpoint_id} changed concurrently; retry")

    def rotate_webhook_secret(
        self: ControlPlane, ctx: CommandContext, endpoint_id: str, keep_previous: timedelta
    ) -> RotatedSecret:
        """A new signing secret for one of the caller's endpoints (another owner's, or none: 404), shown
        once in the answer; the one before it still signs each delivery beside it for `keep_previous`,
        so its receiver can take the new one on without refusing a delivery meanwhile."""
        owner = ctx.tenant_id or PLATFORM
        resource = f"webhook-endpoints/{endpoint_id}"
        with self._rejections_audited(ctx, "webhook_endpoint.rotate_secret", resource):
            box = self.secret_box
            if box is None:
                raise Invalid("No master key to seal the secret with.", title="Webhooks unavailable", kind="no-master-key")
            canonical = canonical_uuid(endpoint_id)
            for _ in range(ATTEMPTS):
                endpoints = self.stored(endpoints_aggregate_id(owner), WebhookEndpoints)
                if endpoints is None or canonical is None or canonical not in endpoints.endpoints:
                    raise NotFound(f"webhook endpoint {endpoint_id} not found")
                key = secrets.token_bytes(SECRET_BYTES)
                sealed = box.seal_secret(key, secret_aad(owner, canonical))
                until = format_time(datetime.now(UTC) + keep_previous)
                endpoints.rotate(owner=owner, endpoint_id=canonical, sealed_secret=sealed, previous_valid_until=until)
                try:
                    self.save(endpoints, self._audit(ctx, "webhook_endpoint.rotate_secret", resource, owner))
                except IntegrityError:
                    continue
                return RotatedSecret(canonical, secret_text(key), until)
            raise Conflict(f"webhook endpoint {endpoint_id} changed concurrently; retry")


def describe(domain_event: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The log's type, tenant and data for a webhook endpoints event (never its secret, sealed or
    not); None for any other event."""
    match type(domain_event).__qualname__:
        case "WebhookEndpoints.Opened":
            return ENDPOINTS_OPENED, domain_event.owner, {"owner": domain_event.owner}
        case "WebhookEndpoints.EndpointAdded":
            data = {
                "owner": domain_event.owner,
                "id": domain_event.endpoint_id,
                "url": domain_event.url,
                "description": domain_event.description,
            }
            return ENDPOINT_CREATED, domain_event.owner, data
        case "WebhookEndpoints.EndpointRemoved":
            return ENDPOINT_DELETED, domain_event.owner, {"owner": domain_event.owner, "id": domain_event.endpoint_id}
        case "WebhookEndpoints.SecretRotated":
            data = {
                "owner": domain_event.owner,
                "id": domain_event.endpoint_id,
                "previous_valid_until": domain_event.previous_valid_until,
            }
            return SECRET_ROTATED, domain_event.owner, data
    return None
