"""Commands refused before they reach the control plane still leave an audit entry.

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
