"""HEAD on every GET route (RFC 9110, 9.3.2): the GET's status and headers, without its body.

Starlette's own routes answer HEAD where they answer GET; FastAPI's do not (405), so uptime
checkers and caches probing `HEAD /healthz` or a document's URL were refused. This layer, the
innermost, hands a HEAD request on as a GET (a copy of the scope, so routing and the route itself run
as for a GET; the route it found is copied back for the outer layers, which record the request as
HEAD: metrics, the `api_call` record, the span) and drops the body of its answer, keeping its
`Content-Length` (the server, which saw HEAD, sends none either). A live meter watch answers a GET
with a stream that lasts minutes: its HEAD is 405 (`Allow: GET`), not a request that never ends.
Nothing is added to the OpenAPI document: HEAD is implied by GET there too.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import STREAMS, Problem, problem_body


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        if STREAMS.match(scope["path"]):
            await _not_allowed(scope, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the rest of it: nothing is sent until the last part
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        # A copy: the server reads the method from its own scope to know the answer has no body.
        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, without_body)
        finally:
            scope.update((key, value) for key, value in as_get.items() if key != "method")  # the route found


async def _not_allowed(scope: Scope, send: Send) -> None:
    problem = Problem(405, "Method not allowed", "A meter watch is a stream of events: open it with GET.")
    body = problem_body(scope.get("root_path", "") + scope["path"], problem)
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"allow", b"GET"),
    ]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def install(app: FastAPI) -> None:
    app.add_middleware(HeadAsGet)
