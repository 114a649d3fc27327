"""A bare HTTP/1.1 keep-alive client for load generators: one connection, one request at a time.

The load generator shares the machine's 2 cores with the system it measures, so the CPU it spends
per request is taken from the API and its workers. aiohttp spent about 160 µs of CPU per consume
(quota_consume, 2026-12-04); this client writes each request with one `transport.write` and reads
the answer straight off the protocol's `data_received`, parsing only the status line and
Content-Length: a few tens of µs. It speaks only what the load needs: requests with a body,
answers framed by Content-Length (no chunked bodies, no redirects, no compression); anything
else fails the request, which the load counts as an error. A server that closes the connection
(`Connection: close`, or it went away) is reconnected on the next request.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit


class HttpError(Exception):
    """The connection failed or the answer was not one this client reads."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiting = self.waiting
        if waiting is None or waiting.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        try:
            status = int(head[9:12])
            at = head.index(b"\r\ncontent-length:") + 17
            stop = head.find(b"\r\n", at)
            length = int(head[at : stop if stop >= 0 else len(head)])
        except ValueError:
            waiting.set_exception(HttpError(f"an answer this client does not read: {head[:200]!r}"))
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        waiting.set_result((status, body, b"\r\nconnection: close" in head))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(HttpError(f"connection lost: {exc}"))


class RawHttpClient:
    """POSTs to one server over one keep-alive connection; `async with` closes it."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self._protocol: _Protocol | None = None

    async def __aenter__(self) -> RawHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    def request_head(self, path: str, headers: dict[str, str]) -> bytes:
        """The request line and headers, but for Content-Length: built once per client, reused per request."""
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\nContent-Length: ").encode()

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST whose head came from `request_head`."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
            self._protocol = protocol
        assert protocol.transport is not None
        waiting: asyncio.Future[tuple[int, bytes, bool]] = asyncio.get_running_loop().create_future()
        protocol.waiting = waiting
        protocol.transport.write(b"%s%d\r\n\r\n%s" % (head, len(body), body))
        try:
            status, answer, closing = await waiting
        except BaseException:
            self.close()
            raise
        finally:
            protocol.waiting = None
        if closing:
            self.close()
        return status, answer
