"""Verified API keys kept in memory, so a request need not read the event store to authenticate.

A key changes only through events in the event store (issued, revoked), so
the cache is exact as long as every such event reaches `forget`. `KeyChanges`
reads them: after each command of this process, and in Kafka mode whenever
PostgreSQL notifies that the store changed, which covers the commands of
other API processes. Where those notifications cannot be promised (the
listening connection is down or not yet up), or reading the changes failed,
the cache is distrusted: it serves nothing and keeps nothing, and every
request reads the store as before.

An answer read from the store is kept only if no change was seen while it
was being read (`generation`): a key revoked between the read and the `put`
is not kept alive by a stale read.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from uuid import UUID

from eventsourcing.domain import AggregateCreated
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.utils import get_topic

from commands.control_plane import ApiKey, Principal, key_aggregate_id
from omni import metrics

# Every event that changes an existing API key: all of ApiKey's events but the one creating it
# (nothing can be cached about a key before it exists). A new kind of key event is covered as is.
KEY_TOPICS = tuple(
    sorted(
        get_topic(kind)
        for kind in vars(ApiKey).values()
        if isinstance(kind, type) and issubclass(kind, ApiKey.Event) and not issubclass(kind, AggregateCreated)
    )
)


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    key: UUID  # the key's aggregate id, which the store's events name
    stored_at: float


class KeyCache:
    """Token digest -> Principal, least recently used first out. Safe to share between threads.

    Trusted while it is `watched` (every key change will reach `forget`) and `current` (the
    last look at the changes succeeded). Untrusted, it serves nothing and keeps nothing.
    """

    def __init__(self, *, capacity: int = 10_000, max_age: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._watched = False
        self._current = True
        self._generation = 0

    @property
    def trusted(self) -> bool:
        return self._watched and self._current

    @property
    def generation(self) -> int:
        """Read it before reading a key from the store; hand it to `put` with what was read."""
        return self._generation

    def get(self, token: str) -> Principal | None:
        digest = _digest(token)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and self._clock() - entry.stored_at > self.max_age:
                del self._entries[digest]
                entry = None
            if entry is not None:
                self._entries.move_to_end(digest)
        metrics.labelled(metrics.KEY_CACHE, "hit" if entry is not None else "miss").inc()
        return entry.principal if entry is not None else None

    def put(self, token: str, principal: Principal, generation: int) -> None:
        if principal.key_id is None or principal.is_admin:
            return
        digest = _digest(token)
        entry = _Entry(principal, key_aggregate_id(principal.key_id), self._clock())
        with self._lock:
            if not self.trusted or generation != self._generation:
                return
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def forget(self, keys: Iterable[UUID]) -> None:
        """These keys changed: drop them, and any answer about them being read right now."""
        changed = set(keys)
        if not changed:
            return
        with self._lock:
            self._generation += 1
            for digest in [d for d, entry in self._entries.items() if entry.key in changed]:
                del self._entries[digest]

    def watched(self, yes: bool) -> None:
        """Whether every change reaches `forget` from now on. Either way what was kept goes: it
        may be stale (before watching) or may go stale unseen (after)."""
        self._set(watched=yes, current=True if yes else self._current)

    def current(self, yes: bool) -> None:
        """Whether the last look at the changes succeeded; on the first success after a failure,
        what was kept during the blind spell goes."""
        if yes != self._current:
            self._set(watched=self._watched, current=yes)

    def __len__(self) -> int:
        return len(self._entries)

    def _set(self, *, watched: bool, current: bool) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._watched, self._current = watched, current
            trusted = self.trusted
        metrics.KEY_CACHE_TRUSTED.set(trusted)


class KeyChanges:
    """Reads the key events stored since it last looked, and makes the cache forget those keys.

    Notification ids are committed in order (the event store serialises its writers), so
    everything at or below the highest id seen has been read once that id is passed.
    """

    def __init__(self, recorder: ApplicationRecorder, cache: KeyCache, *, page: int = 500) -> None:
        self.recorder = recorder
        self.cache = cache
        self.page = page
        self._position = 0
        self._lock = threading.Lock()

    def start_watching(self) -> None:
        """Every change from now on reaches `catch_up` (a listener is up, or this process is the only
        writer). The ones before do not matter: the cache starts empty."""
        with self._lock:
            self._position = self.recorder.max_notification_id() or 0
            self.cache.watched(True)

    def stop_watching(self) -> None:
        self.cache.watched(False)

    def catch_up(self) -> None:
        with self._lock:
            try:
                self._read_changes()
            except Exception:
                self.cache.current(False)
                raise
            self.cache.current(True)

    def _read_changes(self) -> None:
        top = self.recorder.max_notification_id() or 0
        changed: list[UUID] = []
        position = self._position
        while position < top:
            page = self.recorder.select_notifications(
                start=position, limit=self.page, stop=top, topics=KEY_TOPICS, inclusive_of_start=False
            )
            changed += [UUID(str(n.originator_id)) for n in page]  # a UUID, or its text (SQLite)
            if len(page) < self.page:
                break
            position = page[-1].id
        self.cache.forget(changed)
        self._position = top


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
