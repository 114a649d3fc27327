"""Every error the API gives is RFC 9457 problem+json; this module is the one place that maps them."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import simplejson
from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from api.audit import record_refusal
from commands.errors import Conflict, Invalid, LimitReached, NotFound, Rejected, TooSoon, status_of
from commands.refusals import refusal_reason
from omni import metrics
from schemas.envelope import cursor_time
from schemas.ids import canonical_uuid
from stores.database import EVENT_STORE_AWAY, StatementTimedOut, StoreUnavailable
from streams.log import CountersUnavailable, LogUnavailable

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://omni.dev/problems/"
MEDIA_TYPE = "application/problem+json"
CLIENT_CLOSED_REQUEST = 499  # never sent (the client is gone); what metrics count such a request as


DETAILED_ERRORS = 3  # a validation problem's detail tells the first few of its errors (all are in `errors`)


class Problem(Exception):
    """Raise to answer with a problem; `errors` lists per-item reasons. A 422 always lists them: one
    at `location` (where in the request, dotted: `query.from`; the request as a whole by default)
    with the detail as its reason, where no `errors` are given."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        kind: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        members: dict[str, Any] | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind
        if errors is None and status == 422:
            errors = [{"location": location or "request", "reason": detail or title}]
        self.errors = errors
        self.headers = headers or {}
        self.members = members or {}  # extension members (RFC 9457 section 3.2), beside the standard ones


class BodyProblem(HTTPException):
    """A Problem raised while the body is read (api/edge.py). FastAPI turns any other exception
    from reading a body into a plain 400; an HTTPException it lets through."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.status, problem.detail, problem.headers)
        self.problem = problem


class ExactJSONResponse(JSONResponse):
    """JSON where Decimals are written as exact numbers, never through float. A JSONResponse, so
    the OpenAPI document shows the route's response model rather than a string."""

    def render(self, content: Any) -> bytes:
        return exact_json(content)


def exact_json(content: Any) -> bytes:
    """JSON on one line, Decimals written as exact numbers."""
    return simplejson.dumps(content, use_decimal=True, separators=(",", ":"), default=str).encode()


# What a path segment may hold unencoded (RFC 3986 pchar), and `/`: anything else is percent-encoded.
PATH_SAFE = "/!$&'()*+,;=:@-._~"


def problem_body(instance: str, problem: Problem) -> bytes:
    """The RFC 9457 document of `problem`, about the request at path `instance` (as decoded: encoded
    again here, so that the member is the URI reference RFC 9457 says it is, with no raw space or NUL)."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + problem.kind if problem.kind else "about:blank",
        "title": problem.title,
        "status": problem.status,
        "instance": quote(instance, safe=PATH_SAFE),
    }
    if problem.detail:
        body["detail"] = problem.detail
    if problem.errors is not None:
        body["errors"] = problem.errors
    for name, value in problem.members.items():
        body.setdefault(name, value)
    return simplejson.dumps(body, default=str).encode()


def problem_response(request: Request, problem: Problem) -> Response:
    return Response(
        problem_body(request.url.path, problem),
        status_code=problem.status,
        media_type=MEDIA_TYPE,
        headers=problem.headers,
    )


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    431: "Request header fields too large",
    422: "Unprocessable content",
    429: "Too many requests",
    503: "Service unavailable",
}


# Routes whose GET is a stream of events, not a document: no HEAD (api/head_requests.py).
STREAMS = re.compile(r"^/v1/meters/[^/]+/watch$")


def allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document lists for this request's path: Starlette names only those of
    the first route it finds on the path, and FastAPI's routers keep the others out of its reach.
    HEAD wherever GET is (api/head_requests.py), but on a stream."""
    path = request.url.path
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if _template_regex(template).fullmatch(path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods and not STREAMS.match(path):
        methods.add("HEAD")
    return sorted(methods)


@functools.cache
def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)))


def validation_reason(error: Mapping[str, Any]) -> str:
    """pydantic's message for a validation error, but a length limit on text counted in characters:
    text with a validator of its own (schemas.text.Text) has its length checked as a generic
    value's, which pydantic words as "items after validation"."""
    text, limits = error.get("input"), error.get("ctx") or {}
    kind = error.get("type")
    if isinstance(text, str) and kind in ("too_long", "string_too_long") and "max_length" in limits:
        return f"String should have at most {_characters(limits['max_length'])}"
    if isinstance(text, str) and kind in ("too_short", "string_too_short") and "min_length" in limits:
        return f"String should have at least {_characters(limits['min_length'])}"
    if kind == "json_invalid" and limits.get("error"):  # what the parser found: "Expecting value"
        return f"{error.get('msg', 'JSON decode error')}: {limits['error']}"
    # A validator's own words, without the kind of exception pydantic puts before them.
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def request_location(error: Mapping[str, Any], body: Any) -> str:
    """Where in the request an error is, dotted (`body.prices.0.included`)."""
    return ".".join(request_steps(error, body))


def request_steps(error: Mapping[str, Any], body: Any) -> list[str]:
    """The steps to where in the request an error is: pydantic's path, less the steps that name no
    place in the body sent (a tagged union's tag, `per_unit`, which pydantic puts between a list's
    item and its fields). Followed through the body itself; a step the body lacks is kept only
    where the error is that it is missing."""
    loc = tuple(error.get("loc", ()))
    if not loc or loc[0] != "body" or not isinstance(body, dict | list):
        return [str(step) for step in loc]
    kept: list[str] = ["body"]
    node: Any = body
    for index, step in enumerate(loc[1:], start=1):
        if isinstance(node, dict) and isinstance(step, str) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        elif index == len(loc) - 1 and error.get("type") == "missing":
            node = None  # the field that is missing: its place
        else:
            continue  # no place in the body: a union's tag
        kept.append(str(step))
    return kept


def _characters(count: int) -> str:
    return f"{count} character" + ("" if count == 1 else "s")


def invalid_cursor(name: str, wrote: str) -> Problem:
    """422 for a page cursor (`before`, `after`) that is not one an earlier page `wrote` (`next_before`)."""
    return Problem(
        422,
        "Invalid cursor",
        f"`{name}` must be a `{wrote}` from an earlier page.",
        kind="invalid-cursor",
        location=f"query.{name}",
    )


def time_and_id_cursor(before: str) -> tuple[str, str]:
    """`before` as a newest-first list wrote it in `next_before`: `<time>~<id>`, an RFC 3339 time and
    a UUID (a notification's, an invoice's), the time as the views write it; anything else is 422
    rather than a page from somewhere (compared as text, `x~y` answered the whole list)."""
    at, _, last_id = before.partition("~")
    moment, canonical = cursor_time(at), canonical_uuid(last_id)
    if moment is None or canonical is None:
        raise invalid_cursor("before", "next_before")
    return moment, canonical


def store_unavailable() -> Problem:
    """A database could not be reached: nothing was done, retry (the handler's answer, and the edge's)."""
    return Problem(
        503,
        "Store unavailable",
        "A database is unreachable; retry later.",
        kind="store-unavailable",
        headers={"Retry-After": "1"},
    )


# Dependencies away, each told by name (503, nothing done, retry in a second): the most specific
# class answers (CountersUnavailable is a LogUnavailable to everything that retries one).
OUTAGES: dict[type[Exception], tuple[str, str, str]] = {
    LogUnavailable: (
        "log-unavailable",
        "Log unavailable",
        "The event log cannot take events right now; nothing was accepted. Retry later.",
    ),
    # Redis away is not the log away: an operator told "log unavailable" looks at Kafka first.
    CountersUnavailable: (
        "counters-unavailable",
        "Counters unavailable",
        "Redis, which holds the de-duplication claims and the quota counters, cannot decide right now; "
        "nothing was accepted. Retry later.",
    ),
    StatementTimedOut: (
        "statement-timeout",
        "Statement timed out",
        "A database statement ran past OMNI_DATABASE_STATEMENT_SECONDS and was cancelled; nothing was "
        "changed. A narrower question (a shorter range, fewer groups) is answered sooner.",
    ),
}


def reason_of(problem: Problem) -> str:
    """A refusal's reason as its audit entry keeps it: the problem's status, title and kind, and each
    error's place, never the detail or the errors' reasons, which quote what the caller sent
    (commands.refusals)."""
    # An unknown parameter's name is the caller's, whatever its shape (commands.refusals.CALLER_NAMED).
    code = "unknown_parameter" if problem.kind == "unknown-parameter" else None
    places = [(str(e.get("location", "request")), code) for e in problem.errors or []]
    return refusal_reason(problem.status, problem.title, kind=problem.kind, places=places)


def _outage_handler(kind: str, title: str, detail: str) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def answer(request: Request, exc: Exception) -> Response:
        log.warning("%s: %s", title.lower(), exc)
        return problem_response(request, Problem(503, title, detail, kind=kind, headers={"Retry-After": "1"}))

    return answer


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        if 400 <= exc.status < 500:
            await record_refusal(request, reason_of(exc))
        return problem_response(request, exc)

    @app.exception_handler(BodyProblem)
    async def _body(request: Request, exc: BodyProblem) -> Response:
        return await _problem(request, exc.problem)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            # JSON that does not parse: pydantic's location is the character it stopped at, no place in
            # the body; told in the reason instead.
            {"location": "body", "reason": f"{validation_reason(e)} at character {e['loc'][-1]}"}
            if e.get("type") == "json_invalid" and len(e.get("loc", ())) == 2
            else {"location": request_location(e, exc.body), "reason": validation_reason(e)}
            for e in exc.errors()
        ]
        body_error = any(e["location"].startswith("body") for e in errors)
        json_broken = any(e.get("type") == "json_invalid" for e in exc.errors())
        status = 400 if json_broken else 422
        told = "; ".join(f"{e['location']}: {e['reason']}" for e in errors[:DETAILED_ERRORS])
        more = len(errors) - DETAILED_ERRORS
        detail = told + (f"; and {more} more (see errors)" if more > 0 else "")
        problem = Problem(
            status,
            "Malformed JSON" if json_broken else "Invalid request",
            detail,
            kind="invalid-request" if not body_error else "invalid-body",
            errors=errors,
        )
        # The places from pydantic's steps, each judged whole: a field the caller named `a.b@c.d` is one step.
        places = [
            (["body"] if e.get("type") == "json_invalid" else request_steps(e, exc.body), e.get("type")) for e in exc.errors()
        ]
        await record_refusal(request, refusal_reason(status, problem.title, kind=problem.kind, places=places))
        return problem_response(request, problem)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
        return problem_response(
            request,
            Problem(
                exc.status_code, _TITLES.get(exc.status_code, "Error"), str(exc.detail) if exc.detail else None, headers=headers
            ),
        )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return await _rejected(request, exc, Problem(*status_of(exc), str(exc), kind="not-found"))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> Response:
        return await _rejected(request, exc, Problem(*status_of(exc), str(exc), kind=exc.kind, members=exc.members))

    @app.exception_handler(LimitReached)
    async def _limit(request: Request, exc: LimitReached) -> Response:
        problem = Problem(*status_of(exc), str(exc), kind=exc.kind, members={"limit": exc.limit})
        return await _rejected(request, exc, problem)

    @app.exception_handler(TooSoon)
    async def _too_soon(request: Request, exc: TooSoon) -> Response:
        headers = {"Retry-After": str(exc.retry_after)}
        problem = Problem(*status_of(exc), str(exc), kind=exc.kind, headers=headers)
        return await _rejected(request, exc, problem)

    @app.exception_handler(Invalid)
    async def _rule(request: Request, exc: Invalid) -> Response:
        return await _rejected(request, exc, Problem(*status_of(exc), str(exc), kind=exc.kind, errors=exc.errors))

    async def _rejected(request: Request, exc: Rejected, problem: Problem) -> Response:
        """A command's refusal is audited once: by the control plane when it refused it there, else
        here (a route refusing before the command, such as a path naming no resource)."""
        if not exc.audited:
            await record_refusal(request, reason_of(problem))
        return problem_response(request, problem)

    for exception, (kind, title, detail) in OUTAGES.items():
        app.add_exception_handler(exception, _outage_handler(kind, title, detail))

    async def _store_down(request: Request, exc: Exception) -> Response:
        log.warning("store unavailable: %s", exc)
        return problem_response(request, store_unavailable())

    for away in (StoreUnavailable, *EVENT_STORE_AWAY):
        app.add_exception_handler(away, _store_down)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody is left to answer, and nothing went wrong on our side: no traceback, no ERROR.
        log.info("client went away during %s %s before its body was read", request.method, request.url.path)
        metrics.CLIENT_DISCONNECTS.inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request, Problem(500, "Internal error", "An unexpected error occurred; it has been logged.", kind="internal")
        )
