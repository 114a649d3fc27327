"""The API's edge: what a request may cost before anything else reads it.

Every request passes here before routing, in this order:

1. its headers are bounded (431 past `max_header_bytes`, names and values together);
2. a route under /v1 needs an API key, checked from the headers alone: a caller without a
   valid key is answered 401 before one byte of its body is read, so anonymous traffic
   costs no parsing, no memory for its body and no durable record;
3. its body is bounded in size (413, from Content-Length when declared, else as it streams)
   and in time (408 when the next piece takes longer than `body_timeout_seconds`).

Answers under /v1 carry `Cache-Control: no-store`, refusals included: each is one tenant's private
data, and some (a new tenant, a new key) carry a secret shown once.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import EVENT_STORE_AWAY, BodyProblem, Problem, problem_response, store_unavailable
from commands.control_plane import Principal
from omni import metrics
from omni.bootstrap import Platform
from omni.key_lookups import LookupsBusy
from stores.database import StoreUnavailable

PROTECTED_PREFIX = "/v1/"
WEBHOOKS_PREFIX = "/v1/webhooks/"  # no API key: each webhook verifies its sender's signature itself


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})


def body_stalled(timeout: float) -> Problem:
    """408 for a body no part of which arrived for `timeout` seconds; the connection closes after it."""
    return Problem(
        408,
        "Request timeout",
        f"The body stalled: no part of it arrived for {timeout} s.",
        kind="body-timeout",
        headers={"Connection": "close"},
    )


def lookups_busy() -> Problem:
    return Problem(
        503,
        "Service Unavailable",
        "Too many API keys this process has not verified yet are being checked at once; retry shortly.",
        kind="key-lookups-busy",
        headers={"Retry-After": "1"},
    )


async def authenticate(platform: Platform, authorization: str) -> Principal:
    """The caller behind an `Authorization` header value, or 401. Reads the event store (on the
    key lookups' own threads, bounded: omni.key_lookups) only for a well-formed key this process
    has neither verified nor refused yet."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("Send an API key as `Authorization: Bearer <key>`.")
    try:
        principal = await platform.verify(token)
    except LookupsBusy:
        raise lookups_busy() from None
    except (StoreUnavailable, *EVENT_STORE_AWAY):  # the edge runs outside the app's handlers: say it here, as they would
        raise store_unavailable() from None
    if principal is None:
        raise unauthorized("The API key is unknown or revoked.")
    return principal


def header_bytes(scope: Scope) -> int:
    return sum(len(name) + len(value) for name, value in scope["headers"])


class EdgeMiddleware:
    """Plain ASGI (no task group per request); see the module docstring for what it enforces."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform
        settings = platform.settings
        self.max_header_bytes = settings.max_header_bytes
        self.max_body_bytes = settings.max_body_bytes
        self.body_timeout = settings.body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Every answer under /v1/ is private, refusals included (a 401, the webhook's answers).
        private = scope["path"].startswith(PROTECTED_PREFIX)
        answer = _no_store(send) if private else send
        try:
            self._check_headers(scope)
            if private and not scope["path"].startswith(WEBHOOKS_PREFIX):
                principal = await authenticate(self.platform, _header(scope, b"authorization"))
                scope.setdefault("state", {})["principal"] = principal
        except Problem as refused:
            reason = {401: "unauthorized", 431: "headers-too-large"}.get(refused.status) or refused.kind or "refused"
            metrics.REFUSED_BEFORE_AUTH.labels(reason).inc()
            await problem_response(Request(scope), refused)(scope, receive, answer)
            return
        await self.app(scope, self._bounded(scope, receive), answer)

    def _check_headers(self, scope: Scope) -> None:
        if header_bytes(scope) > self.max_header_bytes:
            raise Problem(
                431,
                "Request header fields too large",
                f"The request's headers may hold at most {self.max_header_bytes} bytes, names and values together.",
                kind="headers-too-large",
            )
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()

    def _too_large(self) -> Problem:
        return Problem(413, "Content too large", f"The body may be at most {self.max_body_bytes} bytes.", kind="too-large")

    def _bounded(self, scope: Scope, receive: Receive) -> Receive:
        """`receive`, refusing a body past the size limit (413) or one that stalls (408)."""
        size = 0
        complete = False

        async def bounded_receive() -> Message:
            nonlocal size, complete
            if complete:  # the body is in: what comes now is only the disconnect, whenever it comes
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout):  # no task of its own, unlike wait_for
                    message = await receive()
            except TimeoutError:
                raise BodyProblem(body_stalled(self.body_timeout)) from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_body_bytes:
                    raise BodyProblem(self._too_large())
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return bounded_receive


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _no_store(send: Send) -> Send:
    async def send_private(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message)["cache-control"] = "no-store"
        await send(message)

    return send_private


def install(app: FastAPI, platform: Platform) -> None:
    app.add_middleware(EdgeMiddleware, platform=platform)
