"""The quota ledger port: where consume decides and the hot counters live.

Embedded mode keeps them in the embedded log's SQLite file (streams.embedded_quotas), Kafka mode in
Redis (streams.redis_quotas). Both decide with projections.quotas.decide and count the same events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import orjson

from projections.quotas import CounterKey, Decision, PeriodKey
from schemas.envelope import Envelope
from schemas.plans import Entitlement
from stores.database import Database
from streams.log import LogUnavailable


class Rebuilding(LogUnavailable):
    """The hot counters are being rebuilt: a fold that would count facts waits and tries again."""


@dataclass(frozen=True, slots=True)
class ConsumeRequest:
    tenant_id: str
    meter: str
    amount: Decimal
    idempotency_key: str
    subject: str | None
    entitlement: Entitlement | None
    period: PeriodKey  # the quota's period (a day when there is no quota), of the consume's time
    usage: tuple[Envelope, bytes]  # the usage event to append if accepted, and its wire form
    refusal: Envelope  # the refusal to append if refused (encoded only then: most consumes are accepted)

    def fingerprint(self) -> str:
        return consume_fingerprint(self.meter, self.amount, self.subject)


def consume_fingerprint(meter: str, amount: Decimal, subject: str | None) -> str:
    """What a retry must repeat to get the kept answer: the same meter, amount and subject."""
    return orjson.dumps([meter, str(amount), subject]).decode()


@dataclass(frozen=True, slots=True)
class ConsumeOutcome:
    decision: Decision
    period: PeriodKey
    replayed: bool  # the answer kept from an earlier call with this idempotency key
    conflict: bool = False  # the key was used before for another request: nothing decided
    in_progress: bool = False  # an earlier call with this key is still being recorded


class QuotaLedger(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def consume(self, request: ConsumeRequest) -> ConsumeOutcome:
        """Decide and record atomically; LogUnavailable when it cannot (nothing is counted). A retry
        (the same idempotency key) gets the answer kept for the first call, except a refusal kept for
        another period than the retry's: the refusal counted nothing and its `Retry-After` pointed at
        its period's end, so from there the retry is decided again (it kept giving the old 429, with
        `Retry-After: 1`, until the answer lapsed a day later)."""
        ...

    async def kept(self, tenant_id: str, idempotency_key: str, fingerprint: str, now: datetime) -> ConsumeOutcome | None:
        """The answer kept at `now` for an earlier call with this idempotency key (a conflict if that
        call was another request: another `fingerprint`), deciding nothing; None when there is none.
        LogUnavailable when it cannot be read."""
        ...

    async def used(self, tenant_id: str, meter: str, period: PeriodKey) -> Decimal | None:
        """The hot counter; None when there is none to read (then read the views)."""
        ...

    async def views_swapped(self) -> None:
        """A replay swapped the meters' views in: build the counters again from them, soon."""
        ...


def caught_up_mark(topic: str, partition: int, meter: str) -> str:
    """The mark of what one meter's catch-up has counted in a partition (the hot counters hold the
    meter's usage below it), beside the live fold's mark `topic/partition`. Slugs and topic names
    hold no `#`."""
    return f"{topic}/{partition}#{meter}"


def consumed_from_mark(topic: str, partition: int, meter: str) -> str:
    """Where the counters hold consume's own records of a lagging meter from (caught_up_deltas'
    `consumed_from`): set by a rebuild that found the meter catching up, at the log's end then."""
    return f"{topic}/{partition}#{meter}@consumed"


def tail_from_mark(topic: str, partition: int, meter: str) -> str:
    """Where the tail of the log that rebuild counted itself begins (caught_up_deltas' `tail_from`):
    the views' checkpoint then; the tail ends at `consumed_from_mark`."""
    return f"{topic}/{partition}#{meter}@tail"


# What a meter's catch-up adds to the counters: (since, tail_from, consumed_from) -> per counter
# (projections.quotas.caught_up_deltas, over the batch).
CaughtUpCounter = Callable[[int, int, int], Mapping[CounterKey, Decimal]]


class RebuiltByItsFold(Protocol):
    """Counters that the process folding the meters builds again when its fold finds them built from
    views a replay swapped out since (embedded mode: streams.embedded_quotas)."""

    stale: bool

    async def ensure_built(self, drain: Callable[[], Awaitable[None]], views_db: Database, now: datetime) -> bool: ...


class FactLedger(Protocol):
    """The worker's side: facts counted as the meters fold them (blocking)."""

    def add_facts(
        self,
        topic: str,
        partition: int,
        start: int,
        end: int,
        counted: Callable[[int], Mapping[CounterKey, Decimal]],
        generation: int,
    ) -> None:
        """Count the facts of the batch [start, end) as folded that are not counted yet: `counted(since)`
        is what the batch's facts at offsets from `since` on add, per counter. `generation`: the
        meters' views' (stores.views.meters_generation) as the fold read them; counters built from
        another generation (a replay swapped the views in since) are built again: Redis's are dropped
        at once (the batch uncounted, the rebuild counts it from the log), embedded mode's count on
        until its runner has built them."""
        ...

    def add_caught_up(
        self,
        meter: str,
        topic: str,
        partition: int,
        start: int,
        end: int,
        counted: CaughtUpCounter,
        generation: int,
    ) -> None:
        """Count what one meter's catch-up folded of [start, end) that is not counted yet, against a
        mark of that meter's own (the live fold's marks cover the meters that were live).
        `counted(since, tail_from, consumed_from)`: what the batch adds from offset `since` on
        (projections.quotas.caught_up_deltas); the ledger says where those are (0 unless a rebuild
        found the meter lagging). `generation` as for add_facts."""
        ...
