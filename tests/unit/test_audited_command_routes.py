"""api.audit.COMMAND_ROUTES names routes by method and path template: a route whose template
changes (`{event_type}` became `{event_type:path}`) would silently stop auditing its refusals."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

from api.audit import COMMAND_ROUTES
from api.routes import (
    audit,
    events,
    gdpr,
    health,
    invoices,
    meters,
    plans,
    quotas,
    replays,
    slos,
    tenants,
    webhook_endpoints,
    webhooks,
)


def test_every_audited_command_names_a_route_that_exists() -> None:
    routers = (health, tenants, events, meters, plans, quotas, invoices, audit, slos, replays, gdpr, webhooks, webhook_endpoints)
    served = {
        (method, route.path)
        for module in routers
        for route in module.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert set(COMMAND_ROUTES) - served == set()


def test_every_refusals_resource_is_named_by_its_routes_parameters() -> None:
    """A refused command's resource is the one the control plane names for it, from the path's own
    parameters: each name its template uses is one of the route's."""
    for (_, path), audited in COMMAND_ROUTES.items():
        parameters = {name.split(":")[0] for name in re.findall(r"\{([^}]+)\}", path)}
        assert set(re.findall(r"\{(\w+)\}", audited.resource)) <= parameters, (path, audited)
        assert not audited.resource.startswith("/"), audited
