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
- one read at a time per token: requests carrying a token that is being read wait for that read,
  unless a key changed since it began (a revocation is never answered from before it);
- at most `auth_lookups_waiting` reads wait at once; past that, `LookupsBusy` (503 and
  Retry-After at the edge: the key may be good, nothing says it is not), except for tokens the
  store has said were good within the hour (a made-up token is never among them). Keys in the
  key cache are answered from memory and never wait here.
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


class TokenMemory:
    """Digests of tokens, each kept `max_age` seconds from when it was last added, least recently
    added first out past `capacity`. Thread-safe."""

    def __init__(self, *, capacity: int = 10_000, max_age: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        self._added: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, token: str) -> None:
        digest = _digest(token)
        with self._lock:
            self._added[digest] = self._clock()
            self._added.move_to_end(digest)
            while len(self._added) > self.capacity:
                self._added.popitem(last=False)

    def __contains__(self, token: str) -> bool:
        digest = _digest(token)
        with self._lock:
            at = self._added.get(digest)
            if at is not None and self._clock() - at > self.max_age:
                del self._added[digest]
                return False
            return at is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._added)


class KeyLookups:
    """Verifies tokens the key cache did not answer, by `read` (blocking: it reads the event store).

    `generation` is the key cache's count of key changes seen (KeyCache.generation): a request
    joins a read of its token only if no key changed since that read began, so a key revoked
    meanwhile is read again rather than answered from before its revocation."""

    def __init__(
        self, read: Callable[[str], Principal | None], *, threads: int, waiting: int, generation: Callable[[], int] = lambda: 0
    ) -> None:
        self._read = read
        self._generation = generation
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="omni-key-lookup")
        self.max_waiting = waiting
        self.waiting = 0  # reads handed to the threads and not answered yet (only the event loop changes it)
        self.refused = TokenMemory()
        # Tokens the store said were good: past the bound they still get a read (a flood of made-up
        # tokens cannot be among them), so a tenant whose cache entry aged out is not told 503.
        self.verified = TokenMemory(max_age=3600.0)
        self._reading: dict[tuple[bytes, int], asyncio.Future[Principal | None]] = {}  # by (digest, generation)

    async def verify(self, token: str) -> Principal | None:
        """Who `token` is, or None; raises LookupsBusy rather than queue past the bound, and
        whatever the store raises (StoreUnavailable: the edge answers 503)."""
        if parse_token(token) is None:
            return None
        if token in self.refused:
            metrics.labelled(metrics.KEY_CACHE, "refused").inc()
            return None
        place = (_digest(token), self._generation())
        reading = self._reading.get(place)
        if reading is None:
            if self.waiting >= self.max_waiting and token not in self.verified:
                raise LookupsBusy()
            reading = asyncio.get_running_loop().run_in_executor(self._threads, self._read, token)
            self.waiting += 1
            self._reading[place] = reading
            reading.add_done_callback(lambda done: self._release(place, done))  # also when every caller left
        principal = await asyncio.shield(reading)  # a caller that leaves does not cancel the others' read
        (self.refused if principal is None else self.verified).add(token)
        return principal

    def _release(self, place: tuple[bytes, int], reading: asyncio.Future[Principal | None]) -> None:
        if not reading.cancelled():
            reading.exception()  # retrieved: a store failure no one waits for any more is not logged as lost
        if self._reading.get(place) is reading:
            del self._reading[place]
        self.waiting -= 1

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
