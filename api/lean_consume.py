"""Consume without FastAPI's per-request machinery: the same route function, called directly.

Consume is what a gateway calls before each request it serves: the API's hottest route. Around
its own work FastAPI spent more CPU than the work itself (py-spy during quota_consume: trying
every route's pattern in turn, solving the dependencies, reading the body through a Request,
validating and serialising the answer model, and three more ASGI layers). This layer, the
innermost middleware (the edge has authenticated the caller and bounds the body), answers the
common case itself: a tenant key and a JSON body that `ConsumeBody` accepts, parsed as the route
parses it (api/exact_json.py, then the model). It calls the route function (`api.routes.quotas.consume`)
with the arguments FastAPI would pass, writes its answer as FastAPI would (the model's JSON,
`application/json`), answers what the function raises with the app's own exception handlers,
and marks the request with the route, so metrics, the `api_call` record and the span name it
as before.

Everything else goes on to FastAPI unchanged, with what was read of the body handed on (and a
failure while reading it raised again there): another key, another media type, a query string
(refused there: consume takes no parameter), a body that does not parse or validate. So every refusal of a request's shape is still FastAPI's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import json_media_type
from api.exact_json import loads_exact
from api.routes import quotas
from schemas.plans import ConsumeBody


def route_of(endpoint: Callable[..., Any]) -> BaseRoute:
    for route in quotas.router.routes:
        if getattr(route, "endpoint", None) is endpoint:
            return route
    raise LookupError(f"no route for {endpoint.__name__}")


def app_handler(app: FastAPI, failure: Exception) -> Callable[..., Any] | None:
    """The app's handler for `failure`, as Starlette's ExceptionMiddleware finds it (by class, most
    specific first); None for the catch-all, which the outermost layer applies after re-raising."""
    handlers = app.exception_handlers
    for kind in type(failure).__mro__:
        if kind is Exception:
            return None
        if kind in handlers:
            return handlers[kind]
    return None


def _json_media_type(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return json_media_type(value)
    return False


class LeanConsume:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.route = route_of(quotas.consume)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/consume"):
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        match, child = self.route.matches(scope)
        if (
            match is not Match.FULL
            or principal is None
            or principal.is_admin
            or principal.tenant_id is None
            or not _json_media_type(scope)
            or scope.get("query_string")  # consume takes none: FastAPI's dependencies refuse one (api.deps)
        ):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        body = b""
        try:
            while True:
                message = await receive()
                read.append(message)
                if message["type"] != "http.request":  # the client left: FastAPI answers that
                    await self.app(scope, _replay(read, None, receive), send)
                    return
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        except Exception as failure:  # noqa: BLE001 - raised again where FastAPI reads the body
            await self.app(scope, _replay(read, failure, receive), send)
            return
        try:
            parsed = ConsumeBody.model_validate(loads_exact(body))
        except (ValueError, RecursionError):  # not JSON (or nested past the parser), not a consume: FastAPI refuses it
            await self.app(scope, _replay(read, None, receive), send)
            return
        scope.update(child)  # as the router does: the route (which names the span), its endpoint and path parameters
        platform = self.fastapi_app.state.platform
        try:
            extra = Response()  # what the route adds to a 200 (Idempotent-Replayed on a retry)
            result = await quotas.consume(child["path_params"]["meter"], parsed, platform, principal, extra)
        except Exception as failure:
            handler = app_handler(self.fastapi_app, failure)
            if handler is None:
                raise
            response: Response = await handler(Request(scope, receive), failure)
            await response(scope, receive, send)
            return
        # What Starlette's Response(body, media_type="application/json") sends, without building one.
        body = result.model_dump_json().encode()
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        headers += [h for h in extra.raw_headers if h[0] != b"content-length"]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(read: list[Message], failure: BaseException | None, receive: Receive) -> Receive:
    """`receive` as if nothing had been read: the messages read first, then what reading raised, then the rest."""
    pending = list(read)

    async def again() -> Message:
        nonlocal failure
        if pending:
            return pending.pop(0)
        if failure is not None:
            raised, failure = failure, None
            raise raised
        return await receive()

    return again


def install(app: FastAPI) -> None:
    app.add_middleware(LeanConsume, fastapi_app=app)
