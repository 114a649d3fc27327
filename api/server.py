"""How `omni serve` runs the API: uvicorn, with limits on what a connection may hold before the app runs.

uvicorn's httptools protocol keeps every header a client sends, however large, and waits for
them without end. The protocol here bounds both at the transport, before any of the request
reaches the app: headers past `max_header_bytes` are answered 431 and the connection closed,
and a request whose headers are not complete `header_timeout_seconds` after its first byte (or
after the connection opened) is answered 408 and closed, so slow or endless headers cannot pin
memory or connections. The app's edge (api/edge.py) enforces the same header limit for other
servers, and bounds the body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.consume_path import Claim, ConsumePath
from api.problems import PROBLEM_BASE
from omni.settings import Settings
from schemas.plans import ConsumeBody

log = logging.getLogger(__name__)


class CorkedTransport:
    """A transport whose writes within one turn of the event loop leave in one send.

    uvicorn writes a response's status line and headers, then its body, as two writes: two send
    system calls and two TCP segments per small answer (with uvloop each write sends at once). The
    kernel's work per send on loopback was most of the time uvicorn spent answering a consume
    (py-spy: about 12% of the API's CPU for the two). Here the first write of a turn schedules a
    flush at the end of the turn and every write until then joins it; closing flushes first.
    Everything else is the wrapped transport's own.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Answering:
    """What uvicorn sees as the connection's current request while the consume path answers one:
    a cycle not complete yet, so a request pipelined behind it waits its turn (uvicorn queues it
    and stops reading), and a shutdown lets the answer finish, then closes."""

    __slots__ = ("disconnected", "keep_alive", "message_event", "response_complete")

    def __init__(self) -> None:
        self.response_complete = False
        self.keep_alive = True
        self.disconnected = False
        self.message_event = asyncio.Event()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that bounds the size of a request's headers and the time they take, and
    hands consume's common case to the consume path (api/consume_path.py) when one is set."""

    max_header_bytes = 16 * 1024
    header_timeout = 10.0
    consume_path: ConsumePath | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0  # of the request line and the headers parsed so far
        self._fed = 0  # bytes fed to the parser while the headers are incomplete
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._claim: Claim | None = None  # a consume the consume path answers, its body arriving
        self._claim_body: list[bytes] = []
        self._answering: _Answering | None = None  # the claimed request's stand-in for uvicorn's cycle
        self._before_claim: Any = None  # the cycle before it, put back if the request goes the ASGI way
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
        self._await_headers()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest of what it sends is not read
        awaiting = self._header_timer is not None
        super().data_received(data)
        # The parser holds an unfinished header until its end arrives, so count what is fed while the
        # headers are incomplete too: a single endless header is cut off after about the limit.
        if awaiting and self._header_timer is not None:
            self._fed += len(data)
            if self._fed > self.max_header_bytes:
                self._count(self.max_header_bytes + 1)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._fed = 0
        self._await_headers()

    def on_url(self, url: bytes) -> None:
        if self._count(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count(len(name) + len(value)):
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        if self._refused:
            return
        if self.consume_path is not None and self._may_claim():
            claim = self.consume_path.claim(self.parser.get_method(), self.url, self.headers)
            if claim is not None:
                # Under way from now on, as an ASGI cycle would be: a request pipelined behind it
                # queues, and a shutdown lets it finish (then closes).
                self._before_claim, self._answering = self.cycle, _Answering()
                self.cycle = self._answering  # type: ignore[assignment]
                self._claim, self._claim_body = claim, []
                self._await_body()
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._claim is not None:
            self._claim_body.append(body)
            self._await_body()
        elif not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._claim is not None:
            claim, body, answering = self._claim, b"".join(self._claim_body), self._answering
            self._claim, self._claim_body = None, []
            self._stop_body_timer()
            assert self.consume_path is not None and answering is not None
            parsed = self.consume_path.parse(body)
            if parsed is None:  # FastAPI refuses it in its own words: the request goes the ASGI way, as received
                self.cycle = self._before_claim
                super().on_headers_complete()
                if not answering.keep_alive:  # a shutdown came while the body arrived
                    self.cycle.keep_alive = False
                if body:
                    super().on_body(body)
                super().on_message_complete()
                return
            task = self.loop.create_task(self._respond(claim, parsed, self._request_scope(), answering))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
        elif not self._refused:
            super().on_message_complete()

    # -- consume, answered here (api/consume_path.py) ---------------------------------------------

    def _may_claim(self) -> bool:
        """A keep-alive HTTP/1.1 request with nothing else being answered on this connection."""
        idle = self.cycle is None or self.cycle.response_complete
        parser = self.parser
        return idle and not self.pipeline and parser.get_http_version() == "1.1" and parser.should_keep_alive()

    def _request_scope(self) -> Scope:
        """The request's ASGI scope, as uvicorn would have completed it (for the app's handlers)."""
        scope = self.scope
        scope.update(method="POST", path=self.url.decode("ascii"), raw_path=self.url, query_string=b"")
        return scope

    async def _respond(self, claim: Claim, body: ConsumeBody, scope: Scope, answering: _Answering) -> None:
        assert self.consume_path is not None
        try:
            status, headers, content, keep_alive = await self.consume_path.answer(claim, body, scope)
        except Exception:  # a fault of the path itself (the route's own are answered by the app's handlers)
            log.exception("consume answered at the connection failed")
            content = orjson.dumps({"type": PROBLEM_BASE + "internal", "title": "Internal error", "status": 500})
            status, keep_alive = 500, False
            headers = [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/problem+json")]
        if self.flow.write_paused and not answering.disconnected:
            await self.flow.drain()  # a client that does not read its answers is not sent more (as uvicorn's send)
        self._write(answering, status, headers, content, keep_alive=keep_alive)

    def _write(
        self, answering: _Answering, status: int, headers: list[tuple[bytes, bytes]], content: bytes, *, keep_alive: bool
    ) -> None:
        """Write an answer as uvicorn's own cycle does (its default headers first, names in lower case),
        then go on as it does when a response completes."""
        answering.keep_alive = answering.keep_alive and keep_alive
        if not answering.disconnected and not self.transport.is_closing():
            lines = [STATUS_LINE[status]]
            for name, value in [*self.server_state.default_headers, *headers]:
                lines += [name.lower(), b": ", value, b"\r\n"]
            if not answering.keep_alive and not any(name.lower() == b"connection" for name, _ in headers):
                lines.append(b"connection: close\r\n")
            lines += [b"\r\n", content]
            self.transport.write(b"".join(lines))
            if not answering.keep_alive:
                self.transport.close()
        answering.response_complete = True
        answering.message_event.set()
        self.on_response_complete()

    def _await_body(self) -> None:
        """The edge's body timeout, for a body the consume path reads: each part restarts it."""
        self._stop_body_timer()
        assert self.consume_path is not None
        self._body_timer = self.loop.call_later(self.consume_path.body_timeout, self._body_too_slow)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        """The edge's 408 for a stalled body, counted as it counts it; the connection closes."""
        self._body_timer = None
        claim, answering = self._claim, self._answering
        self._claim, self._claim_body = None, []
        assert self.consume_path is not None and claim is not None and answering is not None
        status, headers, content = self.consume_path.stalled(claim, self._request_scope())
        self._write(answering, status, headers, content, keep_alive=False)

    # -------------------------------------------------------------------------

    def _count(self, size: int) -> bool:
        """Add to the request's header bytes; past the limit, answer 431 and stop reading."""
        if self._refused:
            return False
        self._header_bytes += size
        if self._header_bytes <= self.max_header_bytes:
            return True
        self._refuse(
            431,
            b"Request Header Fields Too Large",
            f"The request's headers may hold at most {self.max_header_bytes} bytes, names and values together.",
            "headers-too-large",
        )
        return False

    def _await_headers(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._header_bytes == self._fed == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # an idle connection that never started a request: nothing to answer
            return
        self._refuse(
            408, b"Request Timeout", f"The request's headers did not arrive within {self.header_timeout} s.", "header-timeout"
        )

    def _refuse(self, status: int, reason: bytes, detail: str, kind: str) -> None:
        self._refused = True
        self._stop_header_timer()
        body = orjson.dumps({"type": PROBLEM_BASE + kind, "title": reason.decode(), "status": status, "detail": detail})
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason, len(body), body)
        )
        self.transport.close()


def bounded_protocol(settings: Settings, consume_path: ConsumePath | None = None) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with this configuration's limits (uvicorn builds one per connection)."""
    return type(
        "ConfiguredHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout": settings.header_timeout_seconds,
            "consume_path": consume_path,
        },
    )


def server_config(app: FastAPI, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    consume_path = ConsumePath(app) if settings.consume_at_connection else None
    # uvicorn believes X-Forwarded-For from loopback by default: any local process could then name the
    # IP address an audit entry records. Only the proxies named in OMNI_FORWARDED_ALLOW_IPS are believed.
    proxies = (settings.forwarded_allow_ips or "").strip()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=bounded_protocol(settings, consume_path),
        log_config=None,
        access_log=False,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )


class Server(uvicorn.Server):
    """uvicorn's server, which ends the app's live watches (api/meter_watch.py) as it starts to shut
    down: uvicorn waits for every connection to finish before the app's own shutdown, and a watch
    would otherwise hold that wait open until it timed out."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        watches = getattr(self.app.state, "watches", None)
        if watches is not None:
            watches.close()
        await super().shutdown(sockets)


def serve_app(app: FastAPI, settings: Settings, *, host: str, port: int) -> None:
    Server(server_config(app, settings, host=host, port=port), app).run()
