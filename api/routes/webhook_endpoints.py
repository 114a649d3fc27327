"""Webhook endpoints: where a tenant's notices (the admin's: the platform's) are POSTed as they happen,
and what came of each delivery (README, Webhooks)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request, Response

from api.deps import CallerDep, PlatformDep, command_context
from api.host_lookups import HostLookups
from api.problems import Problem, invalid_cursor
from api.relaying import run_command
from api.roles import RoleFirstRoute
from commands.control_plane import Principal
from commands.errors import Invalid, NotFound
from commands.webhooks import PLATFORM
from schemas.envelope import format_time
from schemas.ids import canonical_uuid
from schemas.webhooks import (
    DeliveryAttempt,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookEndpointBody,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointPublic,
    WebhookSecretRotated,
    WebhookSecretRotation,
    address_problem,
    ip_literal,
    url_problem,
)
from stores import webhooks as webhook_store

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"], route_class=RoleFirstRoute)

_NO_SUCH_NAME = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)}


def _owner(principal: Principal) -> str:
    return PLATFORM if principal.is_admin or principal.tenant_id is None else principal.tenant_id


def _invalid_url(reason: str) -> Invalid:
    return Invalid(reason, [{"location": "body.url", "reason": reason}], title="Invalid webhook URL", kind="invalid-webhook-url")


async def _host_problem(url: str, allow_private: bool, lookups: HostLookups, owner: str) -> str | None:
    """Why the URL's host may not be sent to, by the addresses it resolves to now (None: it may).
    Checked again at each delivery, on the addresses connected to."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ip_literal(host) is not None:
        return None  # url_problem checked it
    try:
        found = await lookups.resolve(owner, host, parts.port or 443)
    except socket.gaierror as failed:
        if failed.errno in _NO_SUCH_NAME:
            return f"The URL's host {host} does not resolve."
        raise Problem(
            503, "DNS unavailable", f"{host} could not be resolved now ({failed}); retry.", kind="dns-unavailable"
        ) from None
    except TimeoutError:
        raise Problem(
            503, "DNS unavailable", f"{host} could not be resolved in {lookups.seconds:g} s; retry.", kind="dns-unavailable"
        ) from None
    for *_, sockaddr in found:
        problem = address_problem(ip_address(sockaddr[0]), allow_private=allow_private)
        if problem is not None:
            return f"The URL's host {host} resolves to {sockaddr[0]}: {problem}"
    return None


def _endpoint(platform: PlatformDep, principal: Principal, endpoint_id: str) -> webhook_store.EndpointRow:
    """The caller's endpoint (another owner's answers 404, as a missing one does)."""
    canonical = canonical_uuid(endpoint_id)
    row = None
    if canonical is not None:
        with platform.db.transaction() as tx:
            row = webhook_store.endpoint(tx, _owner(principal), canonical)
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return row


def _public(row: webhook_store.EndpointRow) -> WebhookEndpointPublic:
    return WebhookEndpointPublic(id=row.id, url=row.url, description=row.description, created_at=row.created_at)


@router.post(
    "",
    status_code=201,
    response_model=WebhookEndpointCreated,
    responses={409: {}, 422: {}, 429: {}, 503: {}},
)
async def create_webhook_endpoint(
    body: WebhookEndpointBody, request: Request, platform: PlatformDep, principal: CallerDep
) -> WebhookEndpointCreated:
    """Add an endpoint: every notice of the caller's (the admin's: the platform's) stored from now on is
    POSTed to it, signed with the `secret` shown in this answer only (Standard Webhooks). The URL is
    https, without credentials, and its host resolves to public addresses only (422 otherwise, the
    reason at `body.url`). An owner has at most OMNI_MAX_WEBHOOK_ENDPOINTS (409 past it)."""
    allow_private = platform.settings.webhooks_allow_private
    lookups: HostLookups = request.app.state.host_lookups
    problem = url_problem(body.url, allow_private=allow_private) or await _host_problem(
        body.url, allow_private, lookups, _owner(principal)
    )
    if problem is not None:
        raise _invalid_url(problem)
    ctx = command_context(request, principal)
    created = await run_command(platform, platform.control.create_webhook_endpoint, ctx, body.url, body.description)
    e = created.endpoint
    return WebhookEndpointCreated(
        id=e.endpoint_id, url=e.url, description=e.description, created_at=e.created_at, secret=created.secret
    )


@router.post("/{endpoint_id}/rotate-secret", response_model=WebhookSecretRotated, responses={404: {}, 409: {}, 422: {}, 503: {}})
async def rotate_webhook_secret(
    endpoint_id: str,
    request: Request,
    platform: PlatformDep,
    principal: CallerDep,
    body: WebhookSecretRotation | None = None,
) -> WebhookSecretRotated:
    """A new signing secret for one of the caller's endpoints, shown in this answer only. The secret it
    replaces still signs each delivery beside it for `previous_secret_hours` (24 by default; 0 for a
    secret that leaked), so the receiver can switch over without refusing a delivery. The body may be
    left out. Another owner's endpoint, or a deleted one: 404."""
    keep = timedelta(hours=(body or WebhookSecretRotation()).previous_secret_hours)
    ctx = command_context(request, principal)
    rotated = await run_command(platform, platform.control.rotate_webhook_secret, ctx, endpoint_id, keep)
    return WebhookSecretRotated(
        id=rotated.endpoint_id, secret=rotated.secret, previous_secret_valid_until=rotated.previous_valid_until
    )


@router.get("", response_model=WebhookEndpointList)
def list_webhook_endpoints(platform: PlatformDep, principal: CallerDep) -> WebhookEndpointList:
    """The caller's endpoints (the admin's: the platform's), oldest first, without their secrets."""
    with platform.db.transaction() as tx:
        rows = webhook_store.endpoints_of(tx, _owner(principal))
    return WebhookEndpointList(data=[_public(r) for r in rows])


@router.get("/{endpoint_id}", response_model=WebhookEndpointPublic, responses={404: {}})
def get_webhook_endpoint(endpoint_id: str, platform: PlatformDep, principal: CallerDep) -> WebhookEndpointPublic:
    """One of the caller's endpoints, without its secret."""
    return _public(_endpoint(platform, principal, endpoint_id))


@router.delete("/{endpoint_id}", status_code=204, response_class=Response, responses={404: {}})
async def delete_webhook_endpoint(endpoint_id: str, request: Request, platform: PlatformDep, principal: CallerDep) -> Response:
    """Delete one of the caller's endpoints: nothing more is sent to it, deliveries still pending included."""
    await run_command(platform, platform.control.delete_webhook_endpoint, command_context(request, principal), endpoint_id)
    return Response(status_code=204)


def _cursor(before: str) -> int:
    if not before.isdigit() or not 0 < int(before) < 2**62:
        raise invalid_cursor("before", "next_before")
    return int(before)


def _at(epoch: float | None) -> str | None:
    return None if epoch is None else format_time(datetime.fromtimestamp(epoch, UTC))


@router.get("/{endpoint_id}/deliveries", response_model=WebhookDeliveryList, responses={404: {}, 422: {}})
def list_webhook_deliveries(
    endpoint_id: str,
    platform: PlatformDep,
    principal: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[str | None, Query(min_length=1, description="The `next_before` of the previous page")] = None,
) -> WebhookDeliveryList:
    """The endpoint's deliveries, newest first: each notice sent or to be sent, its attempts (when,
    the status code or the error) and, for the first pending one, when it is tried next."""
    row = _endpoint(platform, principal, endpoint_id)
    cursor = None if before is None else _cursor(before)
    with platform.db.transaction() as tx:
        found = webhook_store.deliveries(tx, row.id, limit, cursor)
        head = webhook_store.pending_head(tx, row.id)
    data = [
        WebhookDelivery(
            id=d.notice_id,
            type=d.type,
            status=d.state,  # type: ignore[arg-type]
            created_at=d.created_at,
            # Those queued behind it wait for it to settle: no time of their own yet.
            next_attempt_at=_at(d.next_attempt_at) if d.state == webhook_store.PENDING and d.seq == head else None,
            attempts=[DeliveryAttempt(at=at, status_code=status, error=error) for at, status, error in d.attempts],
        )
        for d in found
    ]
    return WebhookDeliveryList(data=data, next_before=str(found[-1].seq) if len(found) == limit else None)
