"""Commands refused before they reach the control plane still leave an audit entry (every command
route is in COMMAND_ROUTES; the control plane audits the refusals it makes itself).

Only an authenticated caller's refusals do: a request without a valid key is refused at the
edge (api/edge.py) and counted in metrics, never stored, so anonymous traffic cannot grow the
event store or the audit topic."""

from __future__ import annotations

import logging

from fastapi import Request

from api.relaying import run_command
from commands.control_plane import CommandContext

log = logging.getLogger(__name__)

# (method, route template) -> the action the control plane records for it.
COMMAND_ROUTES = {
    ("POST", "/v1/tenants"): "tenant.create",
    ("POST", "/v1/tenants/{tenant_id}/keys"): "api_key.issue",
    ("DELETE", "/v1/keys/{key_id}"): "api_key.revoke",
    ("POST", "/v1/meters"): "meter.define",
    ("PATCH", "/v1/meters/{slug}"): "meter.describe",
    ("DELETE", "/v1/meters/{slug}"): "meter.delete",
    ("PUT", "/v1/plans/{slug}"): "plan.put",
    ("PUT", "/v1/tenants/{tenant_id}/plan"): "tenant.plan.assign",
    ("POST", "/v1/tenants/{tenant_id}/suspend"): "tenant.suspend",
    ("POST", "/v1/tenants/{tenant_id}/resume"): "tenant.resume",
    ("PUT", "/v1/tenants/{tenant_id}/quotas/{meter}"): "quota.override.set",
    ("DELETE", "/v1/tenants/{tenant_id}/quotas/{meter}"): "quota.override.remove",
    ("PUT", "/v1/slos/{name}"): "slo.put",
    ("DELETE", "/v1/slos/{name}"): "slo.delete",
    ("PUT", "/v1/data-classes/{event_type:path}"): "data_class.put",
    ("POST", "/v1/gdpr/requests"): "gdpr.request.receive",  # accepted: gdpr.<kind>.received, by the body's kind
    ("PUT", "/v1/gdpr/retention"): "gdpr.retention.put",
    ("POST", "/v1/gdpr/breaches"): "gdpr.breach.record",
    ("POST", "/v1/gdpr/breaches/{breach_id}/notified"): "gdpr.breach.notified",
    ("POST", "/v1/billing/periods/{period}/close"): "billing.period.close",
    ("POST", "/v1/invoices/{invoice_id}/void"): "invoice.void",
    ("POST", "/v1/invoices/{invoice_id}/mark-uncollectible"): "invoice.uncollectible",
    ("POST", "/v1/invoices/{invoice_id}/mark-paid"): "invoice.paid",
    ("POST", "/v1/admin/replays"): "replay.start",
    ("POST", "/v1/webhook-endpoints"): "webhook_endpoint.create",
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): "webhook_endpoint.delete",
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): "webhook_endpoint.rotate_secret",
}


async def record_refusal(request: Request, reason: str) -> None:
    """Audit an authenticated caller's refused command (wrong role, invalid body). Never fails the response."""
    route = request.scope.get("route")
    action = COMMAND_ROUTES.get((request.method, getattr(route, "path", "")))
    platform = getattr(request.app.state, "platform", None)
    principal = getattr(request.state, "principal", None)
    if action is None or platform is None or principal is None:
        return
    ctx = CommandContext(
        tenant_id=None if principal.is_admin else principal.tenant_id,
        key_id=principal.key_id,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        trace_id=getattr(request.state, "trace_id", None),
    )
    try:
        await run_command(platform, platform.control.record_rejection, ctx, action, request.url.path, reason)
    except Exception:  # the refusal itself must still be answered
        log.exception("could not audit a refused %s", action)
