"""Who may call a route, checked before anything else the caller sent is read.

FastAPI reads and parses a route's body before it solves the route's dependencies, and solves the
app's own dependencies (api/deps.py: a NUL in the URL, the declared query) before the route's. So a
tenant's key on an admin route was answered by the input it sent: 400 for a body that does not
parse, 422 for a query, instead of 403. That told a caller the shape of a route it may not use, and
its refused command was audited as malformed JSON rather than as the refusal it is.

Every router's routes are `RoleFirstRoute`: the role its dependencies require (`AdminDep` or
`TenantDep`) is checked on the caller the edge authenticated (api/edge.py), before FastAPI's own
handler reads the body. The refusal is the dependency's own (the same 403, audited as any refused
command is); the dependency still runs afterwards, for the routes outside the edge's protected
prefix and for the route function's argument.

A layer that reads the body before FastAPI routes (api/idempotency.py) asks `RolesByPath` first,
and leaves a request its route will refuse to the route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from api.deps import get_admin, get_tenant
from api.problems import Problem
from commands.control_plane import Principal

RoleCheck = Callable[[Principal], Awaitable[Principal]]
ROLE_CHECKS: tuple[RoleCheck, ...] = (get_admin, get_tenant)


def required_role(dependant: Dependant) -> RoleCheck | None:
    """The role check among a route's dependencies, at any depth; None for a route any caller may call."""
    for dependency in dependant.dependencies:
        if dependency.call in ROLE_CHECKS:
            return dependency.call  # type: ignore[return-value]
        found = required_role(dependency)
        if found is not None:
            return found
    return None


class RoleFirstRoute(APIRoute):
    """A route that refuses a caller of the wrong role before FastAPI reads its request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        check = required_role(self.dependant)
        if check is None:
            return handler

        async def role_first(request: Request) -> Response:
            principal: Principal | None = request.scope.get("state", {}).get("principal")
            if principal is not None:  # authenticated at the edge (a route under its protected prefix)
                await check(principal)
            return await handler(request)

        return role_first


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route, in the routers the app includes too (FastAPI keeps an included router whole,
    with its routes as its router declared them: no include-level prefix or dependency is used here)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)


class RolesByPath:
    """The role each route needs, found from a request's method and path before routing: for the
    layers that would otherwise read a request its route refuses."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._routes: list[tuple[APIRoute, RoleCheck | None]] | None = None  # at the first request: routes come after

    async def refuses(self, scope: Scope, principal: Principal) -> bool:
        """Whether the route the request names needs a role `principal` lacks."""
        if self._routes is None:
            self._routes = [(route, required_role(route.dependant)) for route in api_routes(self._app.router.routes)]
        for route, check in self._routes:  # in the order the app routes them: the first full match is the route
            if route.matches(scope)[0] is Match.FULL:
                if check is None:
                    return False
                try:
                    await check(principal)
                except Problem:
                    return True
                return False
        return False
