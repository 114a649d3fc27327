"""What consume reads from the catalog views (a meter's definition, a tenant's quotas), kept in memory.

Consume read them from the views on every call: a transaction of four statements in a worker
thread, most of an API process's time per consume. They change only through events in the event
store (a meter defined, a plan published or revised, a tenant created or moved to another plan,
an override set or removed: CATALOG_TOPICS), which the worker folds into the views, and the views
say how far they hold the store (`catalog-applied`, the position `Platform.views_reach` waits for).

So an entry keeps what the views answered with the position they held when it was read, and is
served while every catalog event this process has heard of is at or below that position
(`needed`). Hearing of one (a notice from PostgreSQL, which covers every API process's commands,
or a command of this process) stops serving every entry at once, until `catch_up` has read the
store up to its end and found how far the views must be; from then, an entry read before the
views held that event is read again, and one read after is served. A consume after a command
that changed a quota, whose answer waited for the views, reads the new quota: at once in the
process that ran it, and in another as soon as it hears the notice, which PostgreSQL sends when
the command commits, before the worker has even folded it.

Without notices (embedded mode, where nothing listens; a lost listening connection, until it is
back), or when reading the store failed, nothing is served nor kept: every consume reads the
views, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.utils import get_topic

from commands.control_plane import Meter, Tenant
from commands.plans import Plan, QuotaOverride


def _topics(*aggregates: type[Aggregate]) -> tuple[str, ...]:
    return tuple(
        sorted(
            get_topic(kind)
            for aggregate in aggregates
            for kind in vars(aggregate).values()
            if isinstance(kind, type) and issubclass(kind, Aggregate.Event)
        )
    )


# Every event that can change what consume reads: all events of these aggregates, new kinds included.
CATALOG_TOPICS = _topics(Meter, Tenant, Plan, QuotaOverride)


class CatalogCache:
    """Catalog reads by key, each with the `catalog-applied` position it was read at. Thread-safe."""

    def __init__(self, recorder: ApplicationRecorder, *, capacity: int = 10_000, page: int = 500) -> None:
        self.recorder = recorder
        self.capacity = capacity
        self.page = page
        self._entries: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one catch_up at a time
        self._watched = False
        self._heard = 0  # changes heard of (notices, commands)
        self._settled = -1  # of those, how many `catch_up` has accounted for (-1: none yet)
        self._scanned = 0  # the store position read up to
        self._needed = 0  # the highest position of a catalog event found: what the views must hold

    def heard(self) -> None:
        """The store changed (a notice, or a command of this process): serve nothing until `catch_up`.

        Call it on the event loop as the change is heard, before anything else can run."""
        with self._lock:
            self._heard += 1

    def start_watching(self, applied: int) -> None:
        """Every change from now on is heard (a listener is up). `applied`: the views' catalog
        position now, below which nothing need be read; then `catch_up` (blocking)."""
        with self._lock:
            self._entries.clear()
            self._watched = True
            self._heard += 1
            self._scanned = self._needed = applied
        self.catch_up()

    def stop_watching(self) -> None:
        with self._lock:
            self._watched = False
            self._entries.clear()

    def catch_up(self) -> None:
        """Read the catalog events stored since the last look (blocking), and serve again."""
        with self._reading:
            with self._lock:
                heard, position, needed = self._heard, self._scanned, self._needed
            top = self.recorder.max_notification_id() or 0
            while position < top:
                page = self.recorder.select_notifications(
                    start=position, limit=self.page, stop=top, topics=CATALOG_TOPICS, inclusive_of_start=False
                )
                if page:
                    needed = max(needed, page[-1].id)
                if len(page) < self.page:
                    break
                position = page[-1].id
            with self._lock:
                self._scanned = max(self._scanned, top)
                self._needed = max(self._needed, needed)
                self._settled = max(self._settled, heard)

    def _serving(self) -> bool:
        return self._watched and self._settled == self._heard

    def get(self, key: Hashable) -> tuple[bool, Any]:
        """(True, value) if a value is kept for `key` and still holds; else (False, None)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not self._serving() or entry[0] < self._needed:
                return False, None
            self._entries.move_to_end(key)
            return True, entry[1]

    def put(self, key: Hashable, applied: int, value: Any) -> None:
        """Keep `value`, read from views that held the store up to `applied` (read before the value)."""
        with self._lock:
            if not self._serving() or applied < self._needed:
                return
            self._entries[key] = (applied, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def read(self, key: Hashable, applied: Callable[[], int], value: Callable[[], Any]) -> Any:
        """The kept value, or `value()` read (blocking) and kept, `applied()` read first."""
        found, kept = self.get(key)
        if found:
            return kept
        position = applied()
        fresh = value()
        self.put(key, position, fresh)
        return fresh

    def __len__(self) -> int:
        return len(self._entries)
