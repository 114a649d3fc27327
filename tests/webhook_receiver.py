"""A real webhook receiver for tests: an aiohttp server on a free port of 127.0.0.1 that keeps every
request it gets, answers as the test scripts it, and verifies signatures as the Standard Webhooks
specification says (written here from the specification, not with Omni's own code)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: it never answered: it hung)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


def verified(secret: str, received: Received, tolerance: int = 300) -> dict[str, Any]:
    """The payload, once its signature is checked as the specification says: the key is the base64
    after `whsec_`; the signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the header holds
    space-separated `v1,<base64 HMAC-SHA256>` signatures, one of which must match; the timestamp is
    within `tolerance` seconds of now."""
    msg_id = received.headers["webhook-id"]
    timestamp = received.headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) <= tolerance, f"timestamp {timestamp} too far from now"
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{msg_id}.{timestamp}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in received.headers["webhook-signature"].split(" ") if s.startswith("v1,")]
    assert any(hmac.compare_digest(expected, s) for s in given), "no valid signature"
    assert received.headers["content-type"] == "application/json"
    return orjson.loads(received.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """Answers `statuses` in turn (200 once they run out), each `delay` seconds after it arrived; with
    `hang`, answers nothing, ever. `arriving` is set as a request arrives, before any delay."""

    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    delay: float = 0.0
    arriving: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.arriving.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hang:
            self.received.append(Received(headers, body, 0))
            self.arrived.set()
            await asyncio.Event().wait()
        status = self.statuses.pop(0) if self.statuses else 200
        self.received.append(Received(headers, body, status))
        self.arrived.set()
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "http://127.0.0.1:1/elsewhere"})
        return web.Response(status=status)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def delivered(self) -> list[str]:
        """The ids answered with a 2xx, in the order they were."""
        return [r.id for r in self.received if 200 <= r.status < 300]

    async def wait_for(self, count: int, timeout: float = 30.0, *, delivered: bool = True) -> None:
        """Until `count` requests were answered 2xx (or, `delivered` False, received at all)."""
        deadline = time.monotonic() + timeout
        while len(self.delivered() if delivered else self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} requests received: {[r.status for r in self.received]}"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.2)
            except TimeoutError:
                pass
