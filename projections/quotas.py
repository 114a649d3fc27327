"""Quotas: periods, the entitlement in effect, consume decisions, what usage counts, threshold crossings.

Pure: no clock, no I/O. The ledgers (streams.embedded_quotas; Redis in Kafka mode) and the meter
projector call these with what they read.

A quota is an entitlement on an additive meter (SUM or COUNT) for one tenant: a limit per calendar
period (UTC day or month, by event time), from the tenant's plan or from an override of its own.
Its usage in a period is the meter's total for the tenant over that period: the same events, de-
duplicated the same way, whether they came as facts (POST /v1/events) or through consume.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from projections.meter_state import EXACT, BucketState
from projections.meters import BucketKey, CompiledMeter, MeterIndex, numeric, read
from schemas.envelope import Envelope
from schemas.meters import Aggregation, MeterDefinition
from schemas.plans import Enforcement, Entitlement, Period

ADDITIVE = frozenset({Aggregation.SUM, Aggregation.COUNT})
# The extension attribute on a usage event that consume recorded: "<meter> <period>", the meter
# whose quota consume checked and the period it counted in (consume_mark). Its amount is already
# counted for that meter by the ledger that decided, so the fold does not count it there a second
# time; every other meter over the event's type counts it as it counts a fact. Events recorded
# before the meter was named carry the period alone, and count for none of their type's meters.
# Admission refuses the attribute from clients (schemas.envelope.RESERVED).
QUOTA_CONSUME = "quotaconsume"
CONSUME_SOURCE = "omni://quotas"
# A refusal's source: its id is the idempotency key too, and a CloudEvent is one event per (source,
# id). Under CONSUME_SOURCE a refusal would take the key's identity, and the meters, which count
# each (tenant, source, id) once, would drop the usage of a later retry accepted under that key.
REFUSALS_SOURCE = "omni://quotas/refusals"
THRESHOLD_CROSSED = "omni.quota.threshold_crossed"
REFUSED = "omni.quota.refused"
NOTICES = uuid5(NAMESPACE_URL, "https://omni.dev/ids/notifications")


def is_additive(definition: MeterDefinition) -> bool:
    return definition.aggregation in ADDITIVE


@dataclass(frozen=True, slots=True, order=True)
class PeriodKey:
    """One calendar period: `D:2026-12-04` or `M:2026-12` as text."""

    period: Period
    start: datetime

    @property
    def end(self) -> datetime:
        if self.period is Period.DAY:
            return self.start + timedelta(days=1)
        year, month = (self.start.year + 1, 1) if self.start.month == 12 else (self.start.year, self.start.month + 1)
        return self.start.replace(year=year, month=month)

    @property
    def text(self) -> str:
        start = self.start
        return _period_text(self.period, start.year, start.month, start.day)

    @property
    def label(self) -> str:
        """As users read it: 2026-12-04 or 2026-12."""
        return self.text[2:]

    @classmethod
    def parse(cls, text: str) -> PeriodKey:
        kind, _, rest = text.partition(":")
        if kind == "D":
            return cls(Period.DAY, datetime.strptime(rest, "%Y-%m-%d").replace(tzinfo=UTC))
        return cls(Period.MONTH, datetime.strptime(rest, "%Y-%m").replace(tzinfo=UTC))


@functools.lru_cache(maxsize=1024)
def _period_text(period: Period, year: int, month: int, day: int) -> str:
    """PeriodKey.text, formatted once per period (by the start's own date, as strftime reads it):
    every consume and every folded event asks for a few."""
    if period is Period.DAY:
        return "D:" + date(year, month, day).strftime("%Y-%m-%d")
    return "M:" + date(year, month, day).strftime("%Y-%m")


def period_of(moment: datetime, period: Period) -> PeriodKey:
    """The calendar period (UTC) an instant belongs to: its start is in it, its end is not."""
    utc = moment.astimezone(UTC)
    if period is Period.DAY:
        return PeriodKey(period, datetime(utc.year, utc.month, utc.day, tzinfo=UTC))
    return PeriodKey(period, datetime(utc.year, utc.month, 1, tzinfo=UTC))


def periods_around(moment: datetime) -> list[PeriodKey]:
    """The periods a consume may count in soon after `moment`: the day before, of and after it, and
    their months. What a rebuild of the hot counters fills (a consume counts in its own time's
    periods; facts may be ahead of the clock by the future tolerance)."""
    days = [period_of(moment + timedelta(days=shift), Period.DAY) for shift in (-1, 0, 1)]
    months = sorted({period_of(day.start, Period.MONTH) for day in days})
    return [*days, *months]


def periods_of(moment: datetime) -> tuple[PeriodKey, PeriodKey]:
    """Both periods an instant counts in: every quota's usage is kept per day and per month."""
    return period_of(moment, Period.DAY), period_of(moment, Period.MONTH)


@dataclass(frozen=True, slots=True)
class Quota:
    """The entitlement in effect for one tenant and meter, and where it comes from."""

    entitlement: Entitlement
    source: str  # "plan" or "override"
    plan: str | None


def in_effect(plan: str | None, plan_entitlements: Iterable[Entitlement], overrides: Iterable[Entitlement]) -> dict[str, Quota]:
    """Each meter's quota for a tenant: its own override where it has one, else its plan's."""
    quotas = {e.meter: Quota(e, "plan", plan) for e in plan_entitlements}
    quotas.update({e.meter: Quota(e, "override", plan) for e in overrides})
    return dict(sorted(quotas.items()))


@dataclass(frozen=True, slots=True)
class Decision:
    accepted: bool
    used: Decimal  # after the decision: with the amount if accepted
    limit: Decimal | None
    remaining: Decimal | None


# Usage adds as the meters add it: exactly (projections.meter_state.EXACT), never rounded to the 28
# digits of Python's default context (a fact of 1.2e29 made `used` differ from the meter).
_add = EXACT.add


def decide(used: Decimal, amount: Decimal, entitlement: Entitlement | None) -> Decision:
    """Consume `amount` with `used` counted so far in the period. A hard limit refuses what would
    pass it (so the accepted total never does, and reaches it exactly when demand exceeds it); a
    soft limit or no quota at all accepts everything."""
    if entitlement is None:
        return Decision(True, _add(used, amount), None, None)
    limit = entitlement.limit
    after = _add(used, amount)
    if entitlement.enforcement is Enforcement.HARD and after > limit:
        return Decision(False, used, limit, max(limit - used, Decimal(0)))
    return Decision(True, after, limit, max(limit - after, Decimal(0)))


CounterKey = tuple[str, str, str]  # tenant, meter, period text


def amount_of(meter: CompiledMeter, event: Envelope) -> Decimal | None:
    """What one event of the meter's type adds to its usage: 1 for COUNT, the value for SUM; None
    for a value the meter skips, or a meter that is not additive."""
    if meter.aggregation is Aggregation.COUNT:
        return Decimal(1)
    if meter.aggregation is Aggregation.SUM and meter.value_reader is not None:
        return numeric(read(event, meter.value_reader))
    return None


def consume_mark(meter: str, period: PeriodKey) -> str:
    """The QUOTA_CONSUME attribute of the usage event a consume of `meter` records."""
    return f"{meter} {period.text}"


def counted_by_consume(event: Envelope, meter: str) -> bool:
    """Whether the ledger that decided a consume counted this event's amount for `meter` then:
    for the meter the consume named, and for every meter of the type when the mark names none
    (events recorded before it did)."""
    mark = event.extensions.get(QUOTA_CONSUME)
    if mark is None:
        return False
    named, _, period = str(mark).partition(" ")
    return not period or named == meter


def usage_deltas(meters: MeterIndex, events: Iterable[Envelope], *, facts_only: bool) -> dict[CounterKey, Decimal]:
    """Each (tenant, additive meter, period) the events add to, and by how much: in the day and
    the month of each event's time. `facts_only` leaves out what consume's ledger counted when it
    decided (the consumed meter's amount: counted_by_consume)."""
    return _deltas(meters, events, _not_counted_by_consume if facts_only else None)


def consumed_deltas(meters: MeterIndex, events: Iterable[Envelope]) -> dict[CounterKey, Decimal]:
    """What consume's ledgers counted of `events` when they decided: what usage_deltas with
    facts_only leaves out."""
    return _deltas(meters, events, counted_by_consume)


def _not_counted_by_consume(event: Envelope, meter: str) -> bool:
    return not counted_by_consume(event, meter)


def _deltas(
    meters: MeterIndex, events: Iterable[Envelope], counts: Callable[[Envelope, str], bool] | None
) -> dict[CounterKey, Decimal]:
    """usage_deltas' loop: with `counts`, an event adds to a meter only where counts(event, meter)."""
    deltas: dict[CounterKey, Decimal] = {}
    for event in events:
        candidates = meters.by_type.get(event.type)
        if not candidates:
            continue
        periods: tuple[PeriodKey, PeriodKey] | None = None
        for meter in candidates:
            if counts is not None and not counts(event, meter.slug):
                continue
            amount = amount_of(meter, event)
            if amount is None:
                continue
            periods = periods or periods_of(event.event_time)
            for period in periods:
                key = (event.tenant_id, meter.slug, period.text)
                deltas[key] = _add(deltas.get(key, Decimal(0)), amount)
    return deltas


def usage_from_buckets(meters: MeterIndex, deltas: Mapping[BucketKey, BucketState]) -> dict[CounterKey, Decimal]:
    """What usage_deltas(meters, events, facts_only=False) gives, from the minute buckets the meter
    fold made of those events: one step per bucket rather than per event (a batch of thousands of
    events fills a few hundred buckets)."""
    found: dict[CounterKey, Decimal] = {}
    periods: dict[int, tuple[str, str]] = {}  # a UTC day's number -> the texts of that day and its month
    for key, state in deltas.items():
        meter = meters.by_slug.get(key.meter)
        if meter is None or meter.aggregation not in ADDITIVE or not state.count:
            continue
        amount = Decimal(state.count) if meter.aggregation is Aggregation.COUNT else state.total
        day = key.window_start // 86_400
        texts = periods.get(day)
        if texts is None:
            day_key, month_key = periods_of(datetime.fromtimestamp(day * 86_400, tz=UTC))
            texts = periods[day] = (day_key.text, month_key.text)
        for text in texts:
            counter = (key.tenant_id, key.meter, text)
            found[counter] = _add(found.get(counter, Decimal(0)), amount)
    return found


def caught_up_deltas(
    meters: MeterIndex, events: Sequence[tuple[int, Envelope]], since: int, tail_from: int, consumed_from: int
) -> dict[CounterKey, Decimal]:
    """What a meter's catch-up adds to the hot counters, of the (offset, event) pairs it folded from
    `since` on. Below `tail_from` every event counts, consume's own records too: the counters were
    built from the views before the meter held these (it was defined after its events, or lagging
    when the counters were rebuilt). From `tail_from` to `consumed_from` nothing does: the rebuild
    counted that tail of the log (what the views had not folded) itself. From `consumed_from` on only
    facts count, as the live fold counts them: the counters hold what consume counted as it decided.
    With no rebuild that found the meter behind, both are 0: facts only."""
    before = [event for offset, event in events if since <= offset < tail_from]
    after = [event for offset, event in events if offset >= max(since, consumed_from)]
    deltas = usage_deltas(meters, before, facts_only=False)
    for key, amount in usage_deltas(meters, after, facts_only=True).items():
        deltas[key] = _add(deltas.get(key, Decimal(0)), amount)
    return deltas


def minus(usage: Mapping[CounterKey, Decimal], taken: Mapping[CounterKey, Decimal]) -> dict[CounterKey, Decimal]:
    """`usage` less `taken`, key by key; keys that come to zero are left out."""
    left = dict(usage)
    for key, amount in taken.items():
        rest = left.get(key, Decimal(0)) - amount
        if rest:
            left[key] = rest
        else:
            left.pop(key, None)
    return left


def reached(used: Decimal, limit: Decimal, threshold: int) -> bool:
    """Whether usage has reached `threshold` percent of the limit (a zero limit: any usage at all)."""
    if limit == 0:
        return used > 0
    return used * 100 >= limit * threshold


def crossed(before: Decimal, after: Decimal, entitlement: Entitlement) -> list[int]:
    """The thresholds usage reached going from `before` to `after`."""
    return [
        t for t in entitlement.thresholds if reached(after, entitlement.limit, t) and not reached(before, entitlement.limit, t)
    ]


def notification_id(tenant_id: str, meter: str, period: PeriodKey, threshold: int) -> str:
    """One id per (tenant, meter, period, threshold): a restart or a replay cannot notify twice."""
    return str(uuid5(NOTICES, f"quota-threshold/{tenant_id}/{meter}/{period.text}/{threshold}"))


@dataclass(frozen=True, slots=True)
class Crossing:
    id: str
    tenant_id: str
    meter: str
    period: PeriodKey
    threshold: int
    limit: Decimal
    used: Decimal
    occurred_at: datetime  # the recorded time of the event that crossed it


def crossings(
    before: Mapping[CounterKey, Decimal],
    events: Iterable[Envelope],
    meters: MeterIndex,
    quotas: Mapping[tuple[str, str], Quota],
) -> list[Crossing]:
    """Thresholds crossed by a batch of events, in order, given each key's usage before the batch.

    `quotas` maps (tenant, meter) to its quota; a key's usage counts in the quota's own period."""
    used = dict(before)
    found: list[Crossing] = []
    for event in events:
        candidates = meters.by_type.get(event.type)
        if not candidates:
            continue
        for meter in candidates:
            quota = quotas.get((event.tenant_id, meter.slug))
            if quota is None:
                continue
            amount = amount_of(meter, event)
            if amount is None:
                continue
            period = period_of(event.event_time, quota.entitlement.period)
            key = (event.tenant_id, meter.slug, period.text)
            was = used.get(key, Decimal(0))
            now = _add(was, amount)
            used[key] = now
            for threshold in crossed(was, now, quota.entitlement):
                found.append(
                    Crossing(
                        notification_id(event.tenant_id, meter.slug, period, threshold),
                        event.tenant_id,
                        meter.slug,
                        period,
                        threshold,
                        quota.entitlement.limit,
                        now,
                        event.recorded_time,
                    )
                )
    return found


def reached_now(tenant_id: str, meter: str, period: PeriodKey, quota: Quota, used: Decimal, at: datetime) -> list[Crossing]:
    """Every threshold `used` has reached, as crossings at `at` (a quota change's sweep)."""
    e = quota.entitlement
    return [
        Crossing(notification_id(tenant_id, meter, period, t), tenant_id, meter, period, t, e.limit, used, at)
        for t in e.thresholds
        if reached(used, e.limit, t)
    ]


def consume_event_data(definition: MeterDefinition, amount: Decimal, data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The usage event's `data` for a consume: the caller's `data`, with the amount at the meter's
    value path (a SUM meter's path must be under `$.data`)."""
    body: dict[str, Any] = dict(data or {})
    if definition.aggregation is Aggregation.COUNT:
        return body
    parts = (definition.value_property or "").split(".")[1:]
    if len(parts) < 2 or parts[0] != "data":
        raise ValueError(f"meter {definition.slug!r} reads its value from {definition.value_property}, not from data")
    doc = body
    for part in parts[1:-1]:
        inner = doc.get(part)
        doc[part] = inner = dict(inner) if isinstance(inner, dict) else {}
        doc = inner
    doc[parts[-1]] = int(amount) if amount == amount.to_integral_value() else float(amount)
    return body
