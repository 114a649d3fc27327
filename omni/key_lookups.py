"""Authentication's reads of the event store, kept apart and bounded, so keys that fail cost little.

A request whose key this process has not verified yet reads the key from the event store. Without
limits, anyone could send well-formed keys that do not exist (or a real key id with a wrong secret)
as fast as they like: each cost a store read on the thread pool that commands, reads and the data
keys share, and a flood queued everyone else's work behind it. So:

- a token that is not shaped like an API key is refused on the event loop, with no thread and no read;
- a token refused once (no such key, a wrong secret, a revoked key) is remembered for a while and
  refused from memory after that. That is exact: a key's secret never changes and a revoked key
  stays revoked, and no one can hold the secret of a key before it was issued and stored;
- the reads run on threads of their own (`auth_lookup_threads`), so a flood waits behind itself
  and never holds the threads other work needs;
- one read at a time per token: requests carrying a token that is being read wait for that read;
- at most `auth_lookups_waiting` reads wait at once; past that, `LookupsBusy` (503 and
  Retry-After at the edge: the key may be good, nothing says it is not). Keys already verified
  are answered from memory meanwhile and never wait here.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from commands.control_plane import Principal, parse_token
from omni import metrics


class LookupsBusy(Exception):
    """Too many keys are being looked up at once: try again shortly."""


class RefusedTokens:
    """Digests of tokens the event store refused, least recently refused first out. Thread-safe."""

    def __init__(self, *, capacity: int = 10_000, max_age: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        self._refused: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, token: str) -> None:
        digest = _digest(token)
        with self._lock:
            self._refused[digest] = self._clock()
            self._refused.move_to_end(digest)
            while len(self._refused) > self.capacity:
                self._refused.popitem(last=False)

    def __contains__(self, token: str) -> bool:
        digest = _digest(token)
        with self._lock:
            at = self._refused.get(digest)
            if at is not None and self._clock() - at > self.max_age:
                del self._refused[digest]
                return False
            return at is not None

    def __len__(self) -> int:
        return len(self._refused)


class KeyLookups:
    """Verifies tokens the key cache did not answer, by `read` (blocking: it reads the event store)."""

    def __init__(self, read: Callable[[str], Principal | None], *, threads: int, waiting: int) -> None:
        self._read = read
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="omni-key-lookup")
        self.max_waiting = waiting
        self.waiting = 0  # reads handed to the threads and not answered yet (only the event loop changes it)
        self.refused = RefusedTokens()
        self._reading: dict[bytes, asyncio.Future[Principal | None]] = {}  # by token digest

    async def verify(self, token: str) -> Principal | None:
        """Who `token` is, or None; raises LookupsBusy rather than queue past the bound, and
        whatever the store raises (StoreUnavailable: 503)."""
        if parse_token(token) is None:
            return None
        if token in self.refused:
            metrics.labelled(metrics.KEY_CACHE, "refused").inc()
            return None
        digest = _digest(token)
        reading = self._reading.get(digest)
        if reading is not None:
            return await asyncio.shield(reading)  # a caller that leaves does not cancel the others' read
        if self.waiting >= self.max_waiting:
            raise LookupsBusy()
        self.waiting += 1
        reading = self._reading[digest] = asyncio.get_running_loop().run_in_executor(self._threads, self._read, token)
        try:
            principal = await asyncio.shield(reading)
        finally:
            if reading.done():
                self._release(digest, reading)
            else:  # this caller left early: the read still finishes, and frees its place then
                reading.add_done_callback(lambda done: self._release(digest, done))
        if principal is None:
            self.refused.add(token)
        return principal

    def _release(self, digest: bytes, reading: asyncio.Future[Principal | None]) -> None:
        if not reading.cancelled():
            reading.exception()  # retrieved: a store failure no one waits for any more is not logged as lost
        if self._reading.get(digest) is reading:
            del self._reading[digest]
            self.waiting -= 1

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
