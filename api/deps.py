"""Reusable dependencies: the platform, the caller, the command context."""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant

from api.edge import authenticate
from api.problems import Problem
from commands.control_plane import PLATFORM, CommandContext, Principal
from commands.errors import NotFound
from omni.bootstrap import Platform
from schemas.ids import canonical_uuid
from stores import views


async def get_platform(request: Request) -> Platform:
    # `async def`, though it awaits nothing: FastAPI runs a plain `def` dependency in a worker
    # thread, a hop that cost about a tenth of a small request's CPU.
    return request.app.state.platform  # type: ignore[no-any-return]


PlatformDep = Annotated[Platform, Depends(get_platform)]


async def get_principal(request: Request, platform: PlatformDep) -> Principal:
    """The caller, as the edge authenticated it before reading the body (api/edge.py)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # a route outside the edge's protected prefix
        principal = await authenticate(platform, request.headers.get("authorization", ""))
        request.state.principal = principal
    return principal


CallerDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: CallerDep) -> Principal:
    if not principal.is_admin:
        raise Problem(403, "Forbidden", "This route needs the platform admin key.", kind="forbidden")
    return principal


async def get_tenant(principal: CallerDep) -> Principal:
    if principal.is_admin or principal.tenant_id is None:
        raise Problem(403, "Forbidden", "This route needs a tenant API key.", kind="forbidden")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
TenantDep = Annotated[Principal, Depends(get_tenant)]


JSON = "application/json"


def json_media_type(content_type: bytes) -> bool:
    """As FastAPI decides to parse a body as JSON: `application/json` or `application/*+json`
    (parameters aside). Bytes, as the header arrives: the consume paths read it off the scope."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


async def json_body_media_type(request: Request) -> None:
    """Every route whose body FastAPI parses (a model) takes JSON only: a body in another media type,
    or with no `Content-Type` (which FastAPI would not parse), is 415, not a 422 on its shape.
    Installed once for the whole app (api/app.py); routes that read their body themselves (POST
    /v1/events, the webhooks) have no body field and decide for themselves. A route without a body
    field returns at once, before anything reads its body."""
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is None:
        return
    content_type = request.headers.get("content-type", "")
    if json_media_type(content_type.encode("latin-1")) or not await request.body():  # FastAPI has read it already
        return
    sent = content_type.split(";", 1)[0].strip() or "no Content-Type"
    headers = {"Accept-Post": JSON} if request.method == "POST" else {}
    raise Problem(
        415,
        "Unsupported media type",
        f"The body must be JSON, sent as `Content-Type: {JSON}` (or application/*+json); got {sent}.",
        kind="unsupported-media-type",
        headers=headers,
    )


async def no_nul_in_url(request: Request) -> None:
    """No text Omni stores holds a NUL character (PostgreSQL text cannot), so a path parameter
    holding one (`%00`) names nothing: 404, whoever asks, before any store is read with it (PostgreSQL
    refuses such a parameter with an error, which was a 500); but a name a PUT would make is refused
    with 422 at its place, as any other name it cannot take. A query parameter holding one is
    refused with 422 at its place. Installed once for the whole app (api/app.py)."""
    for name, value in request.path_params.items():
        if "\x00" in value:
            if request.method == "PUT" and _puts(request, name):  # a name the request would make: its own error
                raise Problem(
                    422,
                    "Invalid request",
                    "A name may not hold a NUL character (%00).",
                    kind="invalid-request",
                    location=f"path.{name}",
                )
            raise NotFound("no resource is named with a NUL character (%00)")
    for name, value in request.query_params.multi_items():
        if "\x00" in value:
            raise Problem(
                422,
                "Invalid request",
                "Text may not hold a NUL character (%00).",
                kind="invalid-request",
                location=f"query.{name}",
            )


async def query_as_declared(request: Request) -> None:
    """The query string holds the route's own parameters, each as often as it may come, else 422 at
    each place: FastAPI would ignore a parameter the route does not take (a misspelt filter, `as_of`
    where nothing is kept as of a time) and take the last of one sent twice
    (`?window_size=HOUR&window_size=DAY`), answering a question the caller did not ask. Parameters
    that take a list (`group_by`) may repeat; a deepObject one (`filter_group_by[model]`) takes any
    key. Routes outside `/v1/` (documents, probes, metrics) are left alone. Installed once for the
    whole app (api/app.py); a request without a query string returns at once."""
    if not request.scope.get("query_string"):
        return
    declared = _declared_query(request)
    query = request.query_params
    if request.url.path.startswith("/v1/"):
        unknown = [name for name in dict.fromkeys(query) if not declared.takes(name)]
        if unknown:
            reason = f"not a parameter of this operation, which takes {', '.join(declared.named()) or 'none'}"
            raise Problem(
                422,
                "Unknown query parameter",
                f"{', '.join(unknown)}: {reason}.",
                kind="unknown-parameter",
                errors=[{"location": f"query.{name}", "reason": f"{name} is {reason}"} for name in unknown],
            )
    repeated = [name for name in declared.single if len(query.getlist(name)) > 1]
    if repeated:
        raise Problem(
            422,
            "Repeated query parameter",
            f"{', '.join(repeated)}: sent more than once, but takes one value.",
            kind="repeated-parameter",
            errors=[
                {"location": f"query.{name}", "reason": f"{name} takes one value; it was sent more than once"}
                for name in repeated
            ],
        )


@dataclass(frozen=True, slots=True)
class DeclaredQuery:
    """A route's query parameters, its dependencies' included, as its OpenAPI operation declares them."""

    single: tuple[str, ...]  # those that take one value
    many: tuple[str, ...]  # those that take a list
    deep: tuple[str, ...]  # deepObject ones, `name[key]` (documented by the route's openapi_extra)

    def takes(self, name: str) -> bool:
        if name in self.single or name in self.many:
            return True
        base, bracket, rest = name.partition("[")  # `name[key]`, the key without brackets of its own
        key = rest[:-1]
        return bool(bracket) and rest.endswith("]") and "[" not in key and "]" not in key and base in self.deep

    def named(self) -> list[str]:
        return [*self.single, *self.many, *(f"{name}[…]" for name in self.deep)]


# Per app (api/app.py): id of a route -> (the route, its query parameters). The route is held, so its
# id names no other route while its entry lasts.
DeclaredQueries = dict[int, tuple[object, DeclaredQuery]]


def _declared_query(request: Request) -> DeclaredQuery:
    """The request's route's query parameters: found once per route, then kept in the app's table."""
    route = request.scope.get("route")
    table: DeclaredQueries | None = getattr(request.app.state, "declared_queries", None)
    if table is not None and (known := table.get(id(route))) is not None and known[0] is route:
        return known[1]
    dependant = getattr(route, "dependant", None)
    single: dict[str, None] = {}
    many: dict[str, None] = {}
    if isinstance(dependant, Dependant):
        for f in _query_fields(dependant):
            (many if _takes_many(f.field_info.annotation) else single)[f.alias] = None
    extra = getattr(route, "openapi_extra", None) or {}
    deep = tuple(p["name"] for p in extra.get("parameters", []) if p.get("in") == "query" and p.get("style") == "deepObject")
    declared = DeclaredQuery(tuple(single), tuple(many), deep)
    if table is not None:
        table[id(route)] = (route, declared)
    return declared


def _query_fields(dependant: Dependant) -> Iterator[Any]:
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_fields(sub)


def _takes_many(annotation: Any) -> bool:
    """Whether a parameter's type is a list of values (`list[str] | None` is; `str | None` is not)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_many(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_takes_many(arg) for arg in get_args(annotation) if arg is not type(None))
    return origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset)


def _puts(request: Request, name: str) -> bool:
    """Whether path parameter `name` is what a PUT makes or replaces (the path's last segment, as in
    `/v1/plans/{slug}`), not a resource it is about (`/v1/tenants/{tenant_id}/plan`)."""
    template = getattr(request.scope.get("route"), "path", "")
    last = template.rsplit("/", 1)[-1]
    return last.startswith("{") and last.removeprefix("{").split(":", 1)[0].removesuffix("}") == name


def trace_id(request: Request) -> str | None:
    """Set by the tracing middleware: the request's span joins the caller's trace."""
    return getattr(request.state, "trace_id", None)


def command_context(request: Request, principal: Principal) -> CommandContext:
    return CommandContext(
        tenant_id=None if principal.is_admin else principal.tenant_id,
        key_id=principal.key_id,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        trace_id=trace_id(request),
    )


def named_tenant(principal: Principal, tenant: str | None) -> str | None:
    """The tenant `?tenant=` names, as the caller may see it: a tenant key's own (naming another: 404);
    for the admin, the named tenant's canonical id (not an id: 404), or None when it names none."""
    if not principal.is_admin:
        if tenant is not None and canonical_uuid(tenant) != principal.tenant_id:
            raise NotFound(f"tenant {tenant} not found")
        return principal.tenant_id or ""
    if tenant is None:
        return None
    canonical = canonical_uuid(tenant)
    if canonical is None:
        raise NotFound(f"tenant {tenant} not found")
    return canonical


def acting_tenant(platform: Platform, principal: Principal, tenant: str | None) -> str:
    """Whose data a call is about: a tenant key's own tenant (naming another in `?tenant=`: 404); the
    admin's `_platform` (the platform-wide actions), or the existing tenant `?tenant=` names.
    Reads the views when the admin names a tenant (blocking: call it from a worker thread)."""
    named = named_tenant(principal, None if tenant == PLATFORM and principal.is_admin else tenant)
    if named is None:
        return PLATFORM
    if principal.is_admin:
        with platform.db.transaction() as tx:
            if views.tenant(tx, named) is None:
                raise NotFound(f"tenant {tenant} not found")
    return named


def whole_minute(name: str, moment: datetime) -> int:
    """A time query parameter (`from`, `to`) in epoch seconds; 422 unless it is a whole minute, as
    meters and SLOs keep their minutes."""
    if moment.second or moment.microsecond:
        raise Problem(
            422,
            "Invalid time range",
            f"`{name}` must fall on a whole minute (UTC).",
            kind="invalid-range",
            location=f"query.{name}",
        )
    epoch = int(moment.timestamp())
    if not _FIRST_MINUTE <= epoch <= _LAST_MINUTE:  # in UTC past the years a time can name (a 500 before)
        raise Problem(
            422,
            "Invalid time range",
            f"`{name}` must fall between 0001-01-01T00:00:00Z and 9999-12-31T23:59:00Z.",
            kind="invalid-range",
            location=f"query.{name}",
        )
    return epoch


_FIRST_MINUTE = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
_LAST_MINUTE = int(datetime(9999, 12, 31, 23, 59, tzinfo=UTC).timestamp())
