"""Looking up a webhook URL's host when an endpoint is created, one lookup per owner at a time.

A lookup cannot be cancelled: `getaddrinfo` runs in a thread until the resolver gives up (glibc:
5 s times 2 tries against a server that never answers). The request is answered after
RESOLVE_SECONDS (503 `dns-unavailable`), but its lookup goes on holding its thread. They ran on
the event loop's resolver threads (libuv's four, under uvloop), so a walkthrough's tenant naming
hosts of a slow DNS server, twelve requests once, kept every other owner's endpoint creation at
503 for a minute, and would have stalled Kafka's and Redis's reconnections by name as well.

So the lookups run on threads of their own, and an owner has at most one in flight, counted
until its thread is done, not until its request was answered: a second while one is still running
is 429 `dns-lookup-busy` with `Retry-After`. A lookup is never queued: with every thread taken (by
as many owners' slow lookups) the answer is 503 `dns-unavailable` at once. A lookup still running
when the process exits delays its exit until the resolver gives up (threads are joined at exit).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from api.problems import Problem

RESOLVE_SECONDS = 5.0  # how long a request waits for its lookup
LOOKUP_THREADS = 4


class HostLookups:
    def __init__(self, *, threads: int = LOOKUP_THREADS, seconds: float = RESOLVE_SECONDS) -> None:
        self.seconds = seconds
        self.threads = threads
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="omni-host-lookup")
        self._in_flight: Counter[str] = Counter()

    def in_flight(self, owner: str) -> int:
        return self._in_flight[owner]

    async def resolve(self, owner: str, host: str, port: int) -> list[tuple[Any, ...]]:
        """`getaddrinfo(host, port)` for TCP; socket.gaierror as it raises, TimeoutError past
        `seconds`, 429 while the owner's previous lookup still runs."""
        if self._in_flight[owner] >= 1:
            raise Problem(
                429,
                "Lookup in flight",
                "A lookup of an endpoint's host for this owner is still running; retry once it ends.",
                kind="dns-lookup-busy",
                headers={"Retry-After": str(int(2 * self.seconds))},  # a silent server's lookup runs ~2 waits
            )
        if sum(self._in_flight.values()) >= self.threads:
            # Every thread is taken by other owners' lookups: not queued behind them (a queued one
            # timed out and then still counted against its owner), answered now.
            raise Problem(
                503,
                "DNS unavailable",
                "Every host lookup thread is busy; retry shortly.",
                kind="dns-unavailable",
                headers={"Retry-After": str(int(self.seconds))},
            )
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(self._threads, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        self._in_flight[owner] += 1  # after the submit, which raises once the threads are shut down
        lookup.add_done_callback(lambda done: self._done(owner, done))  # when its thread is done
        # Shielded: the timeout answers the request and leaves the lookup running, counted.
        return await asyncio.wait_for(asyncio.shield(lookup), self.seconds)

    def _done(self, owner: str, lookup: asyncio.Future[Any]) -> None:
        if not lookup.cancelled():
            lookup.exception()  # read: a lookup that failed after its request was answered is no error to log
        self._in_flight[owner] -= 1
        if self._in_flight[owner] <= 0:
            del self._in_flight[owner]

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
