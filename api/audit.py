"""Commands refused before they reach the control plane still leave an audit entry (every command
route is in COMMAND_ROUTES; the control plane audits the refusals it makes itself).

Only an authenticated caller's refusals do: a request without a valid key is refused at the
edge (api/edge.py) and counted in metrics, never stored, so anonymous traffic cannot grow the
event store or the audit topic."""

from __future__ import annotations

import logging
from typing import NamedTuple

from fastapi import Request

from api.relaying import run_command
from commands.control_plane import CommandContext
from commands.refusals import kept_resource

log = logging.getLogger(__name__)


class Audited(NamedTuple):
    """How a command route's refusal is audited: its action, and its resource as a template over the
    route's path parameters (the resource the control plane names when it audits the command itself;
    a collection's, where the refused command would have created the item)."""

    action: str
    resource: str


# (method, route template) -> how its refusals are audited.
COMMAND_ROUTES = {
    ("POST", "/v1/tenants"): Audited("tenant.create", "tenants"),
    ("POST", "/v1/tenants/{tenant_id}/keys"): Audited("api_key.issue", "tenants/{tenant_id}/keys"),
    ("DELETE", "/v1/keys/{key_id}"): Audited("api_key.revoke", "keys/{key_id}"),
    ("POST", "/v1/meters"): Audited("meter.define", "meters"),
    ("PATCH", "/v1/meters/{slug}"): Audited("meter.describe", "meters/{slug}"),
    ("DELETE", "/v1/meters/{slug}"): Audited("meter.delete", "meters/{slug}"),
    ("PUT", "/v1/plans/{slug}"): Audited("plan.put", "plans/{slug}"),
    ("PUT", "/v1/tenants/{tenant_id}/plan"): Audited("tenant.plan.assign", "tenants/{tenant_id}/plan"),
    ("POST", "/v1/tenants/{tenant_id}/suspend"): Audited("tenant.suspend", "tenants/{tenant_id}"),
    ("POST", "/v1/tenants/{tenant_id}/resume"): Audited("tenant.resume", "tenants/{tenant_id}"),
    ("PUT", "/v1/tenants/{tenant_id}/quotas/{meter}"): Audited("quota.override.set", "tenants/{tenant_id}/quotas/{meter}"),
    ("DELETE", "/v1/tenants/{tenant_id}/quotas/{meter}"): Audited("quota.override.remove", "tenants/{tenant_id}/quotas/{meter}"),
    ("PUT", "/v1/slos/{name}"): Audited("slo.put", "slos/{name}"),
    ("DELETE", "/v1/slos/{name}"): Audited("slo.delete", "slos/{name}"),
    ("PUT", "/v1/data-classes/{event_type:path}"): Audited("data_class.put", "data-classes/{event_type}"),
    # Accepted, a request is audited as gdpr.<kind>.received, by the body's kind.
    ("POST", "/v1/gdpr/requests"): Audited("gdpr.request.receive", "gdpr/requests"),
    ("PUT", "/v1/gdpr/retention"): Audited("gdpr.retention.put", "gdpr/retention"),
    ("POST", "/v1/gdpr/breaches"): Audited("gdpr.breach.record", "gdpr/breaches"),
    ("POST", "/v1/gdpr/breaches/{breach_id}/notified"): Audited("gdpr.breach.notified", "gdpr/breaches/{breach_id}"),
    ("POST", "/v1/billing/periods/{period}/close"): Audited("billing.period.close", "billing/periods/{period}"),
    ("POST", "/v1/invoices/{invoice_id}/void"): Audited("invoice.void", "invoices/{invoice_id}"),
    ("POST", "/v1/invoices/{invoice_id}/mark-uncollectible"): Audited("invoice.uncollectible", "invoices/{invoice_id}"),
    ("POST", "/v1/invoices/{invoice_id}/mark-paid"): Audited("invoice.paid", "invoices/{invoice_id}"),
    ("POST", "/v1/admin/replays"): Audited("replay.start", "replays"),
    ("POST", "/v1/webhook-endpoints"): Audited("webhook_endpoint.create", "webhook-endpoints"),
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): Audited("webhook_endpoint.delete", "webhook-endpoints/{endpoint_id}"),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): Audited(
        "webhook_endpoint.rotate_secret", "webhook-endpoints/{endpoint_id}"
    ),
}


async def record_refusal(request: Request, reason: str) -> None:
    """Audit an authenticated caller's refused command (wrong role, invalid body), `reason` in our
    words (commands.refusals.refusal_reason), the path's parameters in the resource only where they
    have the shape of an id or slug. Never fails the response."""
    route = request.scope.get("route")
    audited = COMMAND_ROUTES.get((request.method, getattr(route, "path", "")))
    platform = getattr(request.app.state, "platform", None)
    principal = getattr(request.state, "principal", None)
    if audited is None or platform is None or principal is None:
        return
    action = audited.action
    try:
        resource = kept_resource(audited.resource.format_map(request.path_params))
    except KeyError:  # not routed as its template says: the collection's name alone
        resource = kept_resource(audited.resource.split("/", 1)[0])
    ctx = CommandContext(
        tenant_id=None if principal.is_admin else principal.tenant_id,
        key_id=principal.key_id,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        trace_id=getattr(request.state, "trace_id", None),
    )
    try:
        await run_command(platform, platform.control.record_rejection, ctx, action, resource, reason)
    except Exception:  # the refusal itself must still be answered
        log.exception("could not audit a refused %s", action)
