"""The quota ledger of embedded mode: hot counters in the embedded log's own SQLite file.

A consume is one transaction of the log's file: the caller's earlier answer under its idempotency
key, else the counter read, the decision (projections.quotas.decide), the usage record appended to
the log (or the refusal's), the counters raised and the answer kept, committed together. Nothing
can come between the check and the count, across threads and processes: SQLite's write lock
(BEGIN IMMEDIATE) orders them.

Counters hold, per (tenant, additive meter, period), everything the log holds for it: consumes,
counted as they are decided, and facts (POST /v1/events), counted by the meter projector as it
folds them (`add_facts`, before the views commit). A per-partition mark says which offsets the
counters hold, so a batch folded again after a failed commit is not counted twice. Both periods
of every event are kept (its UTC day and its month): a quota's period is its own.

`ensure_built` fills the counters of a log that has none (made before quotas existed): it folds
the log to its end, then, in one transaction of the log's file, where nothing can be appended,
takes the current day's and month's totals from the meter views, if the views hold the whole log.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson

from omni import failpoints, metrics
from projections.meter_state import EXACT
from projections.quotas import CounterKey, Decision, PeriodKey, decide, periods_of
from schemas.envelope import encode, record_headers
from stores import quotas as quota_views
from stores import views
from stores.database import Database
from streams.embedded_log import EmbeddedLog, rollback
from streams.log import Outgoing
from streams.quota_ledger import (
    CaughtUpCounter,
    ConsumeOutcome,
    ConsumeRequest,
    caught_up_mark,
    consumed_from_mark,
    tail_from_mark,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_counters (
    tenant_id TEXT NOT NULL, meter TEXT NOT NULL, period TEXT NOT NULL, used TEXT NOT NULL,
    PRIMARY KEY (tenant_id, meter, period)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quota_marks (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quota_answers (
    tenant_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, request TEXT NOT NULL, answer TEXT NOT NULL,
    keep_until INTEGER NOT NULL, PRIMARY KEY (tenant_id, idempotency_key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quota_answers_expiry ON quota_answers (keep_until);
CREATE TABLE IF NOT EXISTS quota_ledger (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

BUILT = "built"
# What the counters count (streams.redis_quotas.FORMAT): counters built by an older version are
# built again once, at the start.
FORMAT_ROW, FORMAT = "format", "2"
# The generation of the meters' views the counters were built from (stores.views.meters_generation):
# a replay's swap of those views moves it on, and counters of an older one are built again.
GENERATION_ROW = "views_generation"
PURGE_EVERY_SECONDS = 3600.0
KEEP_PERIODS = timedelta(days=62)  # counters of periods that ended longer ago are dropped


class EmbeddedQuotaLedger:
    def __init__(self, log: EmbeddedLog, *, keep: timedelta) -> None:
        self.log = log
        self.keep = keep  # how long an answer is kept for retries (OMNI_QUOTA_ANSWER_SECONDS)
        self._last_purge = 0.0
        # A fold found the counters built from views a replay swapped out since: streams.runner builds
        # them again (as `ensure_built` at the start), counting on in them meanwhile.
        self.stale = False

    async def start(self) -> None:
        self.log.run_locked(lambda db: db.executescript(SCHEMA))

    async def close(self) -> None:
        return None  # the log's file is closed with the log

    # Consume ------------------------------------------------------------------------------------

    async def consume(self, request: ConsumeRequest) -> ConsumeOutcome:
        """Decide and record, atomically."""
        outcome = await asyncio.to_thread(self.log.run_locked, lambda db: self._consume(db, request))
        if not outcome.replayed:
            self.log.appended.set()
            failpoints.hit(failpoints.QUOTA_AFTER_APPEND)
        return outcome

    async def kept(self, tenant_id: str, idempotency_key: str, fingerprint: str, now: datetime) -> ConsumeOutcome | None:
        found = await asyncio.to_thread(self.log.run_locked, lambda db: _kept(db, tenant_id, idempotency_key, now))
        return None if found is None else _kept_outcome(found, fingerprint)

    def _consume(self, db: sqlite3.Connection, request: ConsumeRequest) -> ConsumeOutcome:
        db.execute("BEGIN IMMEDIATE")
        try:
            outcome = self._decide(db, request)
            db.execute("COMMIT")
        except BaseException:
            rollback(db)
            raise
        return outcome

    def _decide(self, db: sqlite3.Connection, request: ConsumeRequest) -> ConsumeOutcome:
        found = _kept(db, request.tenant_id, request.idempotency_key, request.usage[0].event_time)
        if found is not None and not _refused_in_another_period(found, request.period):
            return _kept_outcome(found, request.fingerprint())
        used = _counter(db, (request.tenant_id, request.meter, request.period.text))
        decision = decide(used, request.amount, request.entitlement)
        envelope, value = request.usage if decision.accepted else (request.refusal, encode(request.refusal))
        failpoints.hit(failpoints.QUOTA_BEFORE_APPEND)
        self.log.append_rows(db, self.log.topics.usage, [Outgoing(envelope.tenant_id, value, record_headers(envelope))])
        if decision.accepted:
            for period in periods_of(envelope.event_time):
                _raise(db, (request.tenant_id, request.meter, period.text), request.amount)
        outcome = ConsumeOutcome(decision, request.period, replayed=False)
        db.execute(
            "INSERT OR REPLACE INTO quota_answers VALUES (?, ?, ?, ?, ?)",
            (
                request.tenant_id,
                request.idempotency_key,
                request.fingerprint(),
                orjson.dumps(_answer_of(outcome)).decode(),
                int((request.usage[0].event_time + self.keep).timestamp()),
            ),
        )
        self._purge(db)
        return outcome

    def _purge(self, db: sqlite3.Connection) -> None:
        now = time.time()
        if now - self._last_purge < PURGE_EVERY_SECONDS:
            return
        self._last_purge = now
        db.execute("DELETE FROM quota_answers WHERE keep_until < ?", (int(now),))
        oldest = datetime.fromtimestamp(now - KEEP_PERIODS.total_seconds(), tz=UTC).strftime("%Y-%m-%d")
        db.execute("DELETE FROM quota_counters WHERE period < ? AND period LIKE 'D:%'", ("D:" + oldest,))
        db.execute("DELETE FROM quota_counters WHERE period < ? AND period LIKE 'M:%'", ("M:" + oldest[:7],))

    # Reads --------------------------------------------------------------------------------------

    async def used(self, tenant_id: str, meter: str, period: PeriodKey) -> Decimal | None:
        return await asyncio.to_thread(self.log.run_locked, lambda db: _counter(db, (tenant_id, meter, period.text)))

    # Facts, from the meter projector ---------------------------------------------------------

    def add_facts(
        self,
        topic: str,
        partition: int,
        start: int,
        end: int,
        counted: Callable[[int], Mapping[CounterKey, Decimal]],
        generation: int,
    ) -> None:
        """Count what the batch's facts add from the partition's mark on, and move the mark to
        `end` (blocking). Counters built from other views than the fold's are `stale`: built again soon."""

        def add(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                mark = _mark(db, topic, partition)
                if _generation(db) != generation:
                    # Built from views swapped out since: counted on all the same (no worse than they
                    # were) until built again from the views now live.
                    self.stale = True
                if end > mark:
                    for key, amount in counted(mark).items():
                        _raise(db, key, amount)
                    _set_mark(db, topic, partition, end)
                db.execute("COMMIT")
            except BaseException:
                rollback(db)
                raise

        self.log.run_locked(add)

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
        """Count what a meter's catch-up folded of [start, end) from its own mark on (blocking)."""

        def add(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                mark = _mark(db, caught_up_mark(topic, partition, meter), partition)
                if _generation(db) != generation:
                    self.stale = True
                if end > mark:
                    tail_from = _mark(db, tail_from_mark(topic, partition, meter), partition)
                    consumed_from = _mark(db, consumed_from_mark(topic, partition, meter), partition)
                    for key, amount in counted(max(mark, start), tail_from, consumed_from).items():
                        _raise(db, key, amount)
                    _set_mark(db, caught_up_mark(topic, partition, meter), partition, end)
                db.execute("COMMIT")
            except BaseException:
                rollback(db)
                raise

        self.log.run_locked(add)

    # Building the counters of an older log ------------------------------------------------------

    async def ensure_built(self, drain: Callable[[], Awaitable[None]], views_db: Database, now: datetime) -> bool:
        """Fill the counters from the views if they were never built, or built from views a replay
        swapped out since; True once they are."""
        for _ in range(100):
            # Cleared before the generation is read: a swap after it marks the counters stale again.
            self.stale = False
            generation = await asyncio.to_thread(_views_generation, views_db)
            if await asyncio.to_thread(self.log.run_locked, lambda db: _built(db, generation)):  # noqa: B023 - awaited at once
                return True
            await drain()
            ends = {topic: await self.log.end_offsets(topic) for topic in (self.log.topics.usage, self.log.topics.api_calls)}
            built = await asyncio.to_thread(self.log.run_locked, lambda db: self._build(db, views_db, ends, now))  # noqa: B023
            if built:
                return True
        self.stale = True  # appended to at every try: the runner tries again
        return False

    async def views_swapped(self) -> None:
        """A replay swapped the meters' views in: the counters are built again from them (by the
        runner's next step; its fold's next batch would find it too)."""
        self.stale = True
        self.log.appended.set()  # wakes the runner

    def _build(self, db: sqlite3.Connection, views_db: Database, ends: dict[str, dict[int, int]], now: datetime) -> bool:
        db.execute("BEGIN IMMEDIATE")
        try:
            current = {
                topic: dict(db.execute("SELECT partition, next_offset FROM heads WHERE topic=?", (topic,)).fetchall())
                for topic in ends
            }
            if any({p: o for p, o in ends[topic].items() if o} != current[topic] for topic in ends):
                db.execute("ROLLBACK")
                return False  # appended to since the drain: fold again
            with views_db.transaction() as tx:
                held = {topic: views.checkpoints(tx, consumer, topic) for topic, consumer in self._consumers().items()}
                if any(held[topic].get(p, 0) != o for topic in ends for p, o in current[topic].items()):
                    db.execute("ROLLBACK")
                    return False
                generation = views.meters_generation(tx)
                totals = quota_views.current_totals(tx, views.meter_definitions(tx), now)
                behind = {topic: views.meters_behind(tx, topic, held[topic]) for topic in ends}
            db.execute("DELETE FROM quota_counters")
            db.execute("DELETE FROM quota_marks")
            for key, amount in totals.items():
                _raise(db, key, amount)
            for topic, partitions in current.items():
                for partition, end in partitions.items():
                    _set_mark(db, topic, partition, end)
                # A meter still catching up holds its views' usage below its own offset; its catch-up
                # counts the rest, consume's records of it too (decided before these counters).
                for (meter, partition), folded in behind[topic].items():
                    _set_mark(db, caught_up_mark(topic, partition, meter), partition, folded)
                    # The views hold the whole log here: no tail for the build to count itself.
                    _set_mark(db, tail_from_mark(topic, partition, meter), partition, partitions.get(partition, 0))
                    _set_mark(db, consumed_from_mark(topic, partition, meter), partition, partitions.get(partition, 0))
            db.execute("INSERT INTO quota_ledger VALUES (?, ?) ON CONFLICT DO NOTHING", (BUILT, now.isoformat()))
            for name, value in ((FORMAT_ROW, FORMAT), (GENERATION_ROW, str(generation))):
                db.execute("INSERT INTO quota_ledger VALUES (?, ?) ON CONFLICT DO UPDATE SET value=excluded.value", (name, value))
            db.execute("COMMIT")
            metrics.QUOTA_REBUILDS.inc()
        except BaseException:
            rollback(db)
            raise
        return True

    def _consumers(self) -> dict[str, str]:
        from streams.projectors import API_CALLS, METERS

        return {self.log.topics.usage: METERS, self.log.topics.api_calls: API_CALLS}


def _built(db: sqlite3.Connection, generation: int) -> bool:
    """Whether the counters are built, by this version, from the meters' views of `generation`:
    built by an older version, or from views swapped out since, they are not."""
    row = db.execute("SELECT value FROM quota_ledger WHERE name=?", (FORMAT_ROW,)).fetchone()
    if row is None or row[0] != FORMAT or _generation(db) != generation:
        db.execute("DELETE FROM quota_ledger WHERE name=?", (BUILT,))
        return False
    return db.execute("SELECT 1 FROM quota_ledger WHERE name=?", (BUILT,)).fetchone() is not None


def _generation(db: sqlite3.Connection) -> int:
    """The generation of the meters' views the counters were built from (0 before any swap)."""
    row = db.execute("SELECT value FROM quota_ledger WHERE name=?", (GENERATION_ROW,)).fetchone()
    return 0 if row is None else int(row[0])


def _views_generation(views_db: Database) -> int:
    with views_db.transaction() as tx:
        return views.meters_generation(tx)


def _counter(db: sqlite3.Connection, key: CounterKey) -> Decimal:
    row = db.execute("SELECT used FROM quota_counters WHERE tenant_id=? AND meter=? AND period=?", key).fetchone()
    return Decimal(row[0]) if row else Decimal(0)


def _raise(db: sqlite3.Connection, key: CounterKey, amount: Decimal) -> None:
    db.execute(
        "INSERT INTO quota_counters VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, meter, period) DO UPDATE SET used=?",
        (*key, str(amount), str(EXACT.add(_counter(db, key), amount))),  # exact: the meters' sums are
    )


def _mark(db: sqlite3.Connection, name: str, partition: int) -> int:
    row = db.execute("SELECT next_offset FROM quota_marks WHERE topic=? AND partition=?", (name, partition)).fetchone()
    return int(row[0]) if row else 0


def _set_mark(db: sqlite3.Connection, topic: str, partition: int, end: int) -> None:
    db.execute(
        "INSERT INTO quota_marks VALUES (?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET next_offset=excluded.next_offset",
        (topic, partition, end),
    )


def _answer_of(outcome: ConsumeOutcome) -> dict[str, object]:
    d = outcome.decision
    return {
        "accepted": d.accepted,
        "used": str(d.used),
        "limit": None if d.limit is None else str(d.limit),
        "remaining": None if d.remaining is None else str(d.remaining),
        "period": outcome.period.text,
    }


def _outcome_of(answer: dict[str, object]) -> ConsumeOutcome:
    def number(value: object) -> Decimal | None:
        return None if value is None else Decimal(str(value))

    decision = Decision(
        bool(answer["accepted"]), Decimal(str(answer["used"])), number(answer["limit"]), number(answer["remaining"])
    )
    return ConsumeOutcome(decision, PeriodKey.parse(str(answer["period"])), replayed=True)


def _kept(db: sqlite3.Connection, tenant_id: str, idempotency_key: str, now: datetime) -> tuple[str, str] | None:
    """The kept (fingerprint, answer) under a consume's idempotency key. An answer past its keep_until
    has lapsed, as its Redis key expires in Kafka mode, whether or not the purge has deleted its row
    yet (a decision then replaces it)."""
    row = db.execute(
        "SELECT request, answer FROM quota_answers WHERE tenant_id=? AND idempotency_key=? AND keep_until >= ?",
        (tenant_id, idempotency_key, int(now.timestamp())),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def _refused_in_another_period(found: tuple[str, str], period: PeriodKey) -> bool:
    """A kept refusal whose period is not the retry's: no answer to it (QuotaLedger.consume)."""
    answer = orjson.loads(found[1])
    return not answer["accepted"] and answer["period"] != period.text


def _kept_outcome(found: tuple[str, str], fingerprint: str) -> ConsumeOutcome:
    """The kept answer given again, or a conflict when it was kept for another request."""
    outcome = _outcome_of(orjson.loads(found[1]))
    return outcome if found[0] == fingerprint else replace(outcome, conflict=True)
