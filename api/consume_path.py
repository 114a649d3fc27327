"""Consume answered at the connection: the API's hottest route without the ASGI layers around it.

A gateway calls consume before each request it serves, so its cost per call decides how many an
API process answers within a latency budget. Through ASGI a consume passed uvicorn's request
cycle, eight middlewares and the lean layer (api/lean_consume.py), each wrapping the next one's
`send`: about a third of the API's CPU per consume, and with the loop never idle at 2,000
consumes/s every request queued behind the others (README, "Performance"). Here the HTTP protocol
(api/server.py) hands the common case to this module as soon as the request's headers are in, and
writes the answer itself. Everything a consume meets on the ASGI path is done here too, in the
same order and through the same functions:

- the edge's checks: the key must be one this process has already verified (the key cache, as the
  edge reads it), the body declared by `Content-Length` within `max_body_bytes`; while the body
  arrives, the protocol applies the edge's body timeout (408);
- the request's server span (api.tracing.request_span), current while the route runs, and its
  `traceparent` on the answer;
- the route function itself (api.routes.quotas.consume), its body parsed as the route parses it;
- the app's own exception handlers for whatever the route raises (problem+json, as on the ASGI
  path; the catch-all logs the traceback as there);
- `Cache-Control: no-store`, the HTTP metrics and the `api_call` record (api.metering.record_call).

Anything else goes the ASGI way, untouched: another route or method, a query string, a key not
verified yet or the admin's, another media type, a chunked body or `Expect: 100-continue`, HTTP/1.0
or `Connection: close`, a request pipelined behind one still being answered, and a body that does
not parse or validate (FastAPI's refusal, replayed to it). `tests/e2e/test_consume_path.py`
compares the two paths answer by answer over real HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import FastAPI
from opentelemetry.trace import StatusCode
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Scope

from api import tracing
from api.deps import json_media_type
from api.edge import body_stalled
from api.exact_json import loads_exact
from api.lean_consume import app_handler, route_of
from api.metering import ApiCallRecorder, record_call
from api.problems import problem_response
from api.routes import quotas
from commands.control_plane import Principal
from omni.bootstrap import Platform
from schemas.plans import ConsumeBody

PREFIX, SUFFIX = b"/v1/quotas/", b"/consume"
JSON = b"application/json"
NO_STORE = (b"cache-control", b"no-store")

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Claim:
    """A consume this path answers: its meter, its caller, when its headers were in."""

    meter: str
    principal: Principal
    started: float


class ConsumePath:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.platform: Platform = app.state.platform
        settings = self.platform.settings
        self.recorder: ApiCallRecorder | None = app.state.api_calls if settings.meter_api_calls else None
        self.route: BaseRoute = route_of(quotas.consume)
        self.template: str = getattr(self.route, "path", "")
        self.max_body_bytes = settings.max_body_bytes
        self.body_timeout = settings.body_timeout_seconds

    def claim(self, method: bytes, url: bytes, headers: Headers) -> Claim | None:
        """The consume to answer here, or None for the ASGI path."""
        if method != b"POST" or not url.startswith(PREFIX) or not url.endswith(SUFFIX):
            return None
        meter = url[len(PREFIX) : -len(SUFFIX)]
        if not meter or any(c in meter for c in b"/%?#") or not meter.isascii():
            return None  # not one plain path segment: the router decides what it names
        token = b""
        length = b""
        media = False
        seen: set[bytes] = set()
        for name, value in headers:
            if name in (b"authorization", b"content-type"):
                if name in seen:
                    return None  # twice: which one counts is the ASGI path's reading (the first)
                seen.add(name)
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return None
            elif name == b"content-length":
                length = value
            elif name == b"content-type":
                media = json_media_type(value)
            elif name in (b"transfer-encoding", b"expect"):
                return None
        if not media or not length.isdigit() or int(length) > self.max_body_bytes:
            return None
        token = token.strip()
        principal = self.platform.cached_principal(token.decode("latin-1")) if token else None
        if principal is None or principal.is_admin or principal.tenant_id is None:
            return None
        return Claim(meter.decode("ascii"), principal, time.perf_counter())

    @staticmethod
    def parse(body: bytes) -> ConsumeBody | None:
        """The body as the consume route parses it (api/exact_json.py, then the model); None where
        the route should refuse it."""
        try:
            return ConsumeBody.model_validate(loads_exact(body))
        except (ValueError, RecursionError):  # not JSON (or nested past the parser), or not a consume
            return None

    async def answer(self, claim: Claim, body: ConsumeBody, scope: Scope) -> tuple[int, Headers, bytes, bool]:
        """Run the consume; its status, the app's headers (uvicorn adds its own), the body, and
        whether the connection may stay open (not after an unexpected error, as on the ASGI path).
        `scope`: the request's ASGI scope as uvicorn built it, for the exception handlers."""
        keep_alive = True
        state = scope["state"]
        state["principal"] = claim.principal
        scope.update(route=self.route, endpoint=quotas.consume, path_params={"meter": claim.meter})
        with tracing.request_span("POST", scope["path"], scope["headers"], scope.get("scheme", "http")) as span:
            traceparent = tracing.traceparent_of(span)
            state["traceparent"] = traceparent
            state["trace_id"] = format(span.get_span_context().trace_id, "032x")
            try:
                extra = Response()  # what the route adds to a 200 (Idempotent-Replayed on a retry)
                result = await quotas.consume(claim.meter, body, self.platform, claim.principal, extra)
            except Exception as failure:  # noqa: BLE001 - answered by the app's handler for it, as on the ASGI path
                handler = app_handler(self.app, failure)
                if handler is None:  # unexpected: the catch-all, as the ASGI path's outermost layer applies it
                    handler, keep_alive = self.app.exception_handlers[Exception], False
                    if span.is_recording():
                        span.record_exception(failure)
                        span.set_status(StatusCode.ERROR)
                request = Request(scope)
                request.scope["app"] = self.app
                response = await handler(request, failure)
                status, headers, content = response.status_code, list(response.raw_headers), bytes(response.body)
            else:
                content = result.model_dump_json().encode()
                status, headers = 200, [(b"content-length", str(len(content)).encode()), (b"content-type", JSON)]
                headers += [h for h in extra.raw_headers if h[0] != b"content-length"]
            if span.is_recording():
                span.set_attribute("http.response.status_code", status)
            tracing.named(span, "POST", self.template)
        headers = [h for h in headers if h[0] != b"cache-control"] + [NO_STORE]
        if traceparent:
            headers.append((b"traceparent", traceparent.encode()))
        self._record(claim, status, traceparent)
        return status, headers, content, keep_alive

    def stalled(self, claim: Claim, scope: Scope) -> tuple[int, Headers, bytes]:
        """The edge's 408 for a body that stopped arriving (the connection closes after it)."""
        scope["state"]["principal"] = claim.principal
        response = problem_response(Request(scope), body_stalled(self.body_timeout))
        self._record(claim, 408, None)
        return 408, [*response.raw_headers, NO_STORE], bytes(response.body)

    def _record(self, claim: Claim, status: int, traceparent: str | None) -> None:
        """As the ASGI path's metering layer: counted in the metrics, and recorded unless OMNI_METER_API_CALLS=false."""
        latency_ms = (time.perf_counter() - claim.started) * 1000
        record_call(self.recorder, self.template, "POST", status, latency_ms, claim.principal, traceparent)
