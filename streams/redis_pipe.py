"""One Redis connection whose commands are pipelined: each is written at once, replies come in order.

Consume's hot script calls went through redis-py's asyncio client: a connection taken from the pool
and given back under a lock, the command written through a StreamWriter, the reply read through a
StreamReader under a fresh `asyncio.timeout`. That cost 81 to 93 µs of the API's CPU a call, where
a protocol that feeds hiredis from `data_received` and answers futures in order costs well under
half of it. At an offered rate each call serves only one or two consumes, so that was a tenth of a
consume's CPU.

One connection also orders the calls: Redis runs them in the order they were written, so an answer
handed to one call is kept before any call written after it decides anything, even while both
are in flight.

Failures are redis-py's exceptions, so callers handle them as before: `ConnectionError` when the
connection cannot be made or is lost (every call in flight fails with it; the next call connects
again), `TimeoutError` when a reply takes longer than `reply_timeout` (the connection is dropped,
since what it would answer later can no longer be matched), `ResponseError` (or its subclasses,
such as `NoScriptError`) for an error reply, which fails only its own call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import RedisSSLContext, SSLConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)

from streams.sockets import connected

_ERRORS: dict[str, type[ResponseError] | type[ConnectionError]] = {
    "NOSCRIPT": NoScriptError,
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
}


def error_of(reply: hiredis.ReplyError) -> Exception:
    text = str(reply)
    return _ERRORS.get(text.split(" ", 1)[0], ResponseError)(text)


class _Wire(asyncio.Protocol):
    """The connection's protocol: replies parsed by hiredis, each answering the oldest call waiting."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = connected(transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while (reply := self.reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(ConnectionError("Redis sent a reply no command asked for"))
                return
            future, _ = waiting.popleft()
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(error_of(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"the Redis connection was lost: {exc or 'closed by the server'}"))

    def fail(self, failure: Exception) -> None:
        if self.lost is None:
            self.lost = failure
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(failure)
        if self.transport is not None:
            self.transport.abort()


class RedisPipe:
    """Commands on one connection to `url` (redis://, rediss:// with redis-py's ssl_* options, or
    unix://; with its user, password and database), connected on first use and again after a
    failure. Needs Redis 6 or later when the URL names a user (AUTH user password)."""

    def __init__(self, url: str, *, connect_timeout: float = 2.0, reply_timeout: float = 5.0) -> None:
        self._options = parse_url(url)
        # TLS as redis-py builds it for this URL: its ssl_* query options (CA, client certificate,
        # verification, hostname check) into the same kind of context.
        self._tls = (
            RedisSSLContext(
                **{name.removeprefix("ssl_"): value for name, value in self._options.items() if name.startswith("ssl_")}
            )
            if self._options.get("connection_class") is SSLConnection
            else None
        )
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._wire: _Wire | None = None
        self._connecting = asyncio.Lock()
        self._watch: asyncio.TimerHandle | None = None
        self._closed = False

    async def call(self, *args: Any) -> Any:
        """Send one command and wait for its reply."""
        if self._closed:
            raise ConnectionError("the Redis connection is closed")
        wire = self._wire
        if wire is None or wire.lost is not None:
            wire = await self._connect()
        return await self._send(wire, hiredis.pack_command(args))

    async def evalsha(self, sha: str, source: str, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA, loading the script first if this server does not know it (a restart, a
        SCRIPT FLUSH): NOSCRIPT means nothing ran, so sending it again is safe."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", source)
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    def _send(self, wire: _Wire, packed: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        wire.waiting.append((future, time.monotonic()))
        assert wire.transport is not None
        wire.transport.write(packed)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(self._reply_timeout / 4, self._check_replies)
        return future

    def _check_replies(self) -> None:
        """One timer for the whole connection rather than one per call: the oldest call waiting
        longer than the reply timeout drops the connection, failing every call on it."""
        self._watch = None
        wire = self._wire
        if wire is None or not wire.waiting:
            return
        if time.monotonic() - wire.waiting[0][1] > self._reply_timeout:
            wire.fail(TimeoutError(f"Redis did not reply within {self._reply_timeout}s"))
            return
        self._watch = asyncio.get_running_loop().call_later(self._reply_timeout / 4, self._check_replies)

    async def _connect(self) -> _Wire:
        async with self._connecting:
            if self._closed:
                raise ConnectionError("the Redis connection is closed")
            if self._wire is not None and self._wire.lost is None:
                return self._wire
            loop = asyncio.get_running_loop()
            o = self._options
            wire: _Wire | None = None
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if "path" in o:
                        _, wire = await loop.create_unix_connection(_Wire, o["path"])
                    else:
                        tls = self._tls.get() if self._tls is not None else None
                        _, wire = await loop.create_connection(_Wire, o.get("host", "localhost"), o.get("port", 6379), ssl=tls)
                    if o.get("password"):
                        auth = (o["username"], o["password"]) if o.get("username") else (o["password"],)
                        await self._send(wire, hiredis.pack_command(("AUTH", *auth)))
                    if o.get("db", 0):
                        await self._send(wire, hiredis.pack_command(("SELECT", o["db"])))
            except BaseException as failure:
                if wire is not None:
                    wire.fail(ConnectionError("the Redis connection was not set up"))
                if isinstance(failure, (OSError, asyncio.TimeoutError)):  # asyncio's: the builtin TimeoutError
                    raise ConnectionError(f"could not connect to Redis: {failure!r}") from failure
                raise
            if self._closed:  # closed while connecting: this connection must not outlive it
                wire.fail(ConnectionError("the Redis connection is closed"))
                raise ConnectionError("the Redis connection is closed")
            self._wire = wire
            return wire

    async def close(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._wire is not None:
            self._wire.fail(ConnectionError("the Redis connection is closed"))
            self._wire = None
