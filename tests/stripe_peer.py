"""A real Stripe peer for tests: stripe-mock (started by ops/services/stripe_mock.sh), behind a small
recording HTTP proxy that notes each request's method, path, Idempotency-Key and form parameters
(stripe-mock itself keeps no state), and can play an outage: answer 503, or refuse connections."""

from __future__ import annotations

import http.client
import os
import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlparse

import pytest

STRIPE_MOCK = os.environ.get("STRIPE_API_BASE", "http://127.0.0.1:12111")
UNAVAILABLE = b'{"error": {"type": "api_error", "message": "Stripe is down (the test proxy says so)"}}'
REFUSED = b'{"error": {"type": "invalid_request_error", "message": "Refused (the test proxy says so)"}}'


def stripe_mock_or_skip() -> str:
    """stripe-mock's address; skipped when it does not answer, unless OMNI_REQUIRE_SERVICES is set."""
    request = urllib.request.Request(STRIPE_MOCK + "/v1/customers?limit=1", headers={"Authorization": "Bearer sk_test_omni"})
    try:
        urllib.request.urlopen(request, timeout=3).close()
    except OSError as down:
        if os.environ.get("OMNI_REQUIRE_SERVICES"):
            raise
        pytest.skip(f"stripe-mock unreachable at {STRIPE_MOCK} (bash ops/services/stripe_mock.sh start): {down}")
    return STRIPE_MOCK


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    path: str
    key: str | None  # the Idempotency-Key header
    params: dict[str, str]  # the form body, flattened as Stripe encodes it: metadata[omni_invoice_id]
    status: int  # what the client got


class RecordingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlparse(upstream)
        self.seen: list[Seen] = []
        self.unavailable = False  # answer 503 instead of forwarding
        self.refuse_invoices: set[str] = set()  # our invoice ids whose Stripe invoice is refused with 400
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (on the same port as before after a `stop`)."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening: connections are refused until `start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def take(self) -> list[Seen]:
        """What was seen since the last take."""
        with self._lock:
            seen, self.seen = self.seen, []
        return seen

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        path = handler.path.partition("?")[0]
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        if self.unavailable:
            status, answer, headers = 503, UNAVAILABLE, {"Content-Type": "application/json"}
        elif path == "/v1/invoices" and params.get("metadata[omni_invoice_id]") in self.refuse_invoices:
            status, answer, headers = 400, REFUSED, {"Content-Type": "application/json"}
        else:
            status, answer, headers = self._forward(handler, body)
        with self._lock:
            self.seen.append(Seen(handler.command, path, handler.headers.get("Idempotency-Key"), params, status))
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        upstream = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1", self.upstream.port or 80, timeout=10)
        try:
            forwarded = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection", "content-length")}
            upstream.request(handler.command, handler.path, body=body or None, headers=forwarded)
            response = upstream.getresponse()
            answer = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() in ("content-type", "request-id", "idempotency-key")}
            return response.status, answer, kept
        finally:
            upstream.close()
