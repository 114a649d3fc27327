"""A TCP proxy in front of a real service (PostgreSQL, Redis, a broker, stripe-mock) that plays its
outages, so a test takes a dependency away from Omni without touching the shared service:

- `down()`: the service is gone: every open connection is cut and new ones are refused (the
  listening socket is closed), as when its process stops;
- `up()`: it listens again, on the same port, and passes bytes;
- `freeze()` / `thaw()`: it stops answering without a word (a partition, a frozen host): new
  connections are accepted, and nothing passes either way until thawed;
- `delay`: seconds each chunk of bytes waits before it is passed on (a slow network or host).

It runs on an event loop of its own, in a thread, so a test's event loop blocked (or busy) never
stalls it, and it works beside synchronous clients too. `python -m tests.tcp_proxy PORT HOST:PORT`
runs one by hand (for a walkthrough): commands `down`, `up`, `freeze`, `thaw`, `delay SECONDS` on
its standard input.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TcpProxy:
    def __init__(self, host: str, port: int, *, listen_port: int = 0) -> None:
        self.target = (host, port)
        self.port = listen_port or _free_port()
        self.delay = 0.0
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._thawed: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        self._thawed = asyncio.Event()
        self._thawed.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    def down(self) -> None:
        self._run(self._down())

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._cut()

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def up(self) -> None:
        self._run(self._up())

    async def _up(self) -> None:
        if self._server is None:
            await self._listen()

    def cut(self) -> None:
        """Drop every open connection once (a blip: the service is still there for new ones)."""
        self._run(self._cut_now())

    async def _cut_now(self) -> None:
        self._cut()

    def freeze(self) -> None:
        self._loop.call_soon_threadsafe(lambda: self._thawed and self._thawed.clear())

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(lambda: self._thawed and self._thawed.set())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _close(self) -> None:
        await self._down()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._thawed is not None
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                await self._thawed.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


def main() -> None:
    listen, target = int(sys.argv[1]), sys.argv[2]
    host, _, port = target.rpartition(":")
    proxy = TcpProxy(host, int(port), listen_port=listen).start()
    print(f"proxy {proxy.address} -> {target}", flush=True)
    for line in sys.stdin:
        command, *args = line.split() or [""]
        if command == "delay":
            proxy.delay = float(args[0])
        elif command in {"down", "up", "freeze", "thaw", "cut"}:
            getattr(proxy, command)()
        else:
            print(f"unknown: {line!r}", flush=True)
            continue
        print(f"{command} {' '.join(args)}".strip(), flush=True)
    proxy.close()


if __name__ == "__main__":
    main()
