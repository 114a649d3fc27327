"""How fast one tenant may send events to one API process (OMNI_TENANT_EVENTS_PER_SECOND).

Every tenant's events go to the same log and the same folds: one tenant sending as fast as it can
(a runaway backfill, a hostile key) made every other tenant's facts reach their meters and quotas
minutes late, and their consumes wait behind its batches (a walkthrough measured consume's p50 go
from 31 ms to 680 ms). So each tenant has a token bucket per API process: `rate` events a second,
holding at most one second of them, and never less than a batch (so any batch the API takes can
pass once the bucket is full). A batch that finds too few tokens is refused whole with 429 and
`Retry-After` (the seconds until it would pass; 1 when the bucket is empty before the batch is
read), nothing of it recorded: the sender retries it as is. A batch the log then refuses (503)
gives its events back.

Pure: the clock is given. Not shared between processes: N API processes take N times the rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class IngestRates:
    def __init__(self, per_second: float, *, batch: int, clock: Callable[[], float]) -> None:
        """`per_second`: 0 for no limit; `batch`: the most events one request may carry."""
        self.per_second = per_second
        self.capacity = max(per_second, float(batch))
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _filled(self, tenant_id: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(tenant_id)
        if bucket is None:
            bucket = self._buckets[tenant_id] = _Bucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.per_second)
            bucket.at = now
        return bucket

    def wait_for(self, tenant_id: str, events: int) -> int:
        """0 if `events` may be sent now (they are taken from the bucket), else the whole seconds to
        wait before they may (nothing is taken)."""
        if self.per_second <= 0 or events <= 0:
            return 0
        bucket = self._filled(tenant_id)
        if bucket.tokens >= events:
            bucket.tokens -= events
            return 0
        return max(1, math.ceil((events - bucket.tokens) / self.per_second))

    def give_back(self, tenant_id: str, events: int) -> None:
        """Events taken but never recorded (the log was away: 503): a retry of them is not charged twice."""
        if self.per_second > 0 and (bucket := self._buckets.get(tenant_id)) is not None:
            bucket.tokens = min(self.capacity, bucket.tokens + events)

    def empty(self, tenant_id: str) -> bool:
        """No event at all may be sent now: refused before the body is read for its events."""
        return self.per_second > 0 and self._filled(tenant_id).tokens < 1
