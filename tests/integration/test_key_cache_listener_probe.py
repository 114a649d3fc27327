"""Kafka mode: an API process keeps verified keys in memory only while it hears the event store's
notices. A listening connection that dies without a word (a partition, a host gone: nothing is
closed, nothing raised) delivers no notices either, so the listener probes it after a quiet spell;
a probe not answered in time distrusts the cache, which keeps and serves nothing until listening
again.

The connection goes through a TCP proxy that the test freezes: it keeps both ends open and stops
passing bytes, as a partition does. The listener is the one the API process builds
(Platform._key_listener), with a short probe interval and timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest
from prometheus_client import REGISTRY

from commands.control_plane import CommandContext
from omni.bootstrap import Platform, build
from omni.settings import Settings
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.postgres]

PROBE_EVERY, PROBE_TIMEOUT = 1.0, 0.5


class FreezingProxy:
    """Passes bytes to and from `target` until frozen; frozen, it holds them (both ways, on every
    connection, new ones too) with every socket left open, until thawed."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._thawed.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


async def until(condition: Callable[[], bool], timeout: float, what: str, state: Callable[[], object]) -> float:
    """Seconds until `condition()` held; fails after `timeout` with what `state()` shows."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not {what} within {timeout}s; {state()}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@dataclasses.dataclass
class Deafened:
    """A platform whose key listener runs through a FreezingProxy, with a key verified and kept."""

    platform: Platform
    proxy: FreezingProxy
    listening: asyncio.Task[None]
    token: str

    def state(self) -> str:
        keys = self.platform.keys
        return f"trusted {keys.trusted}, {len(keys)} keys kept, listener done: {self.listening.done()}"


@pytest.fixture
async def deafened(database_url: str) -> AsyncIterator[Deafened]:
    schema = f"it_{uuid.uuid4().hex[:12]}"
    settings = Settings(mode="kafka", database_url=database_url, database_schema=schema, admin_key="admin-key")
    platform = build(settings)  # builds the Kafka and Redis clients without connecting them
    url = urlparse(database_url)
    proxy = FreezingProxy(url.hostname or "localhost", url.port or 5432)
    await proxy.start()
    listener = dataclasses.replace(
        platform._key_listener(),
        url=urlunparse(url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}")),
        probe_every=PROBE_EVERY,
        probe_timeout=PROBE_TIMEOUT,
        retry_max=0.5,
    )
    stop = asyncio.Event()
    listening = asyncio.create_task(listener.run(stop))
    try:
        keys = platform.keys
        await until(lambda: keys.trusted, 10, "listening", lambda: f"listener done: {listening.done()}")
        _, issued = await asyncio.to_thread(platform.control.create_tenant, CommandContext(), "acme", "pro")
        assert await asyncio.to_thread(platform.authenticate, issued.token) is not None
        assert len(keys) == 1 and platform.cached_principal(issued.token) is not None
        yield Deafened(platform, proxy, listening, issued.token)
    finally:
        proxy.thaw()  # so that a probe being cancelled ends at once
        stop.set()
        await asyncio.wait_for(asyncio.gather(listening, return_exceptions=True), timeout=15)
        await proxy.close()
        platform.control.close()
        platform.db.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_while_the_listener_does_not_answer_its_probe_the_cache_keeps_nothing(deafened: Deafened) -> None:
    platform, keys, token = deafened.platform, deafened.platform.keys, deafened.token
    deafened.proxy.freeze()  # the listening connection stops answering, and says nothing
    # 20 s: see the next test for how long it should take.
    await until(lambda: not keys.trusted and len(keys) == 0, 20, "distrusted", deafened.state)
    assert REGISTRY.get_sample_value("omni_key_cache_trusted") == 0
    # While deaf, a key read from the store is served but not kept.
    assert await asyncio.to_thread(platform.authenticate, token) is not None
    assert len(keys) == 0 and platform.cached_principal(token) is None

    deafened.proxy.thaw()
    await until(lambda: keys.trusted, 10, "listening again", deafened.state)
    assert REGISTRY.get_sample_value("omni_key_cache_trusted") == 1
    assert await asyncio.to_thread(platform.authenticate, token) is not None
    assert len(keys) == 1 and platform.cached_principal(token) is not None, "listening again, it keeps keys again"


async def test_a_probe_not_answered_in_time_distrusts_the_cache_within_its_timeout(deafened: Deafened) -> None:
    keys = deafened.platform.keys
    deafened.proxy.freeze()
    # The quiet spell before the probe, the probe's timeout, and a second for the loop's turns.
    bound = PROBE_EVERY + PROBE_TIMEOUT + 1.0
    await until(lambda: not keys.trusted and len(keys) == 0, bound, "distrusted", deafened.state)
