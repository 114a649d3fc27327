"""The quota core (projections/quotas.py): periods, decisions, what counts, thresholds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.meters import MeterIndex, apply
from projections.quotas import (
    QUOTA_CONSUME,
    PeriodKey,
    Quota,
    caught_up_deltas,
    consume_event_data,
    consume_mark,
    consumed_deltas,
    crossed,
    crossings,
    decide,
    in_effect,
    notification_id,
    period_of,
    reached,
    usage_deltas,
    usage_from_buckets,
)
from schemas.envelope import Envelope
from schemas.meters import Aggregation, MeterDefinition
from schemas.plans import Enforcement, Entitlement, Period, exact_quantity

TOKENS = MeterDefinition(slug="tokens", event_type="inference", aggregation=Aggregation.SUM, value_property="$.data.usage.tokens")
CALLS = MeterDefinition(slug="calls", event_type="inference", aggregation=Aggregation.COUNT)
NOW = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)


def event(
    n: int, tokens: object = 5, *, at: datetime = NOW, consumed: bool = False, tenant: str = "t1", mark: str = "D:2026-12-31"
) -> Envelope:
    return Envelope(
        id=f"omni-{n}",
        type="inference",
        tenant_id=tenant,
        source="gw",
        source_id=f"e{n}",
        event_time=at,
        recorded_time=at,
        data={"usage": {"tokens": tokens}},
        extensions={QUOTA_CONSUME: mark} if consumed else {},
    )


def entitlement(
    limit: int, *, hard: bool = True, thresholds: list[int] | None = None, period: Period = Period.DAY
) -> Entitlement:
    return Entitlement(
        meter="tokens",
        limit=Decimal(limit),
        period=period,
        enforcement=Enforcement.HARD if hard else Enforcement.SOFT,
        thresholds=thresholds or [50, 100],
    )


def test_periods_are_calendar_days_and_months_in_utc() -> None:
    day, month = period_of(NOW, Period.DAY), period_of(NOW, Period.MONTH)
    assert (day.text, day.end) == ("D:2026-12-31", datetime(2027, 1, 1, tzinfo=UTC))
    assert (month.text, month.start, month.end) == (
        "M:2026-12",
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_of(datetime(2026, 2, 15, tzinfo=UTC), Period.MONTH).end == datetime(2026, 3, 1, tzinfo=UTC)
    # An offset is the same instant: 00:30 at +01:00 is still the 31st in UTC.
    assert (
        period_of(datetime(2027, 1, 1, 0, 30, tzinfo=UTC).astimezone(UTC) - timedelta(hours=1), Period.DAY).label == "2026-12-31"
    )
    assert PeriodKey.parse("M:2026-12") == month and PeriodKey.parse("D:2026-12-31") == day


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)), st.sampled_from(list(Period)))
def test_every_instant_is_in_exactly_one_period(naive: datetime, period: Period) -> None:
    moment = naive.replace(tzinfo=UTC)
    key = period_of(moment, period)
    assert key.start <= moment < key.end
    assert period_of(key.end, period).start == key.end  # the next period starts where this one ends
    assert period_of(key.end - timedelta(microseconds=1), period) == key


def test_a_hard_limit_refuses_what_would_pass_it_and_fills_exactly() -> None:
    filled = decide(Decimal(90), Decimal(10), entitlement(100))
    assert (filled.accepted, filled.used, filled.remaining) == (True, Decimal(100), Decimal(0))
    over = decide(Decimal(90), Decimal(11), entitlement(100))
    assert (over.accepted, over.used, over.remaining, over.limit) == (False, Decimal(90), Decimal(10), Decimal(100))
    zero = decide(Decimal(0), Decimal("0.001"), entitlement(0))
    assert not zero.accepted


def test_a_soft_limit_and_no_quota_never_refuse() -> None:
    soft = decide(Decimal(90), Decimal(50), entitlement(100, hard=False))
    assert (soft.accepted, soft.used, soft.remaining) == (True, Decimal(140), Decimal(0))
    free = decide(Decimal(7), Decimal(3), None)
    assert (free.accepted, free.used, free.limit, free.remaining) == (True, Decimal(10), None, None)


def test_facts_past_the_limit_leave_nothing_remaining_not_a_negative() -> None:
    assert decide(Decimal(150), Decimal(1), entitlement(100)).remaining == Decimal(0)


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=60), st.integers(min_value=0, max_value=500))
def test_consumes_in_any_order_never_pass_a_hard_limit(amounts: list[int], limit: int) -> None:
    used = Decimal(0)
    for amount in amounts:
        decision = decide(used, Decimal(amount), entitlement(limit))
        used = decision.used
        assert used <= limit
    assert used == sum(a for a in _greedy(amounts, limit))


def _greedy(amounts: list[int], limit: int) -> list[int]:
    taken, total = [], 0
    for amount in amounts:
        if total + amount <= limit:
            taken.append(amount)
            total += amount
    return taken


def test_overrides_win_over_the_plan() -> None:
    plan = [entitlement(100), Entitlement(meter="calls", limit=Decimal(5), period=Period.MONTH)]
    own = [entitlement(999)]
    quotas = in_effect("pro", plan, own)
    assert list(quotas) == ["calls", "tokens"]
    assert quotas["tokens"] == Quota(own[0], "override", "pro")
    assert quotas["calls"].source == "plan"


def test_usage_counts_in_the_day_and_the_month_and_leaves_consumes_out_when_asked() -> None:
    meters = MeterIndex([TOKENS, CALLS])
    events = [event(1, 5), event(2, "2.5"), event(3, "lots"), event(4, 7, consumed=True), event(5, 1, tenant="t2")]
    everything = usage_deltas(meters, events, facts_only=False)
    assert everything[("t1", "tokens", "D:2026-12-31")] == Decimal("14.5")
    assert everything[("t1", "tokens", "M:2026-12")] == Decimal("14.5")
    assert everything[("t1", "calls", "D:2026-12-31")] == 4
    assert everything[("t2", "calls", "M:2026-12")] == 1
    facts = usage_deltas(meters, events, facts_only=True)
    assert facts[("t1", "tokens", "D:2026-12-31")] == Decimal("7.5")
    assert facts[("t1", "calls", "M:2026-12")] == 3


def test_a_catch_up_counts_what_the_counters_lack_and_nothing_a_rebuild_counted() -> None:
    """A meter's catch-up adds what its counters lack: from `since` on (its mark), every event below
    `tail_from` (consume's too: the counters were built without them), nothing up to `consumed_from`
    (the rebuild counted that tail itself), and only facts after (consume counted its own)."""
    meters = MeterIndex([TOKENS])
    mark = consume_mark("tokens", period_of(NOW, Period.DAY))
    pairs = [
        (10, event(1, 100)),
        (11, event(2, 7, consumed=True, mark=mark)),
        (12, event(3, 5)),
        (13, event(4, 3, consumed=True, mark=mark)),
        (14, event(5, 1000)),
    ]
    day = ("t1", "tokens", "D:2026-12-31")
    assert caught_up_deltas(meters, pairs, 10, 0, 0)[day] == 1105, "no rebuild found it behind: facts only"
    assert caught_up_deltas(meters, pairs, 10, 13, 13)[day] == 1112, "below 13 the consume counts, at 13 it does not"
    assert caught_up_deltas(meters, pairs, 10, 12, 14)[day] == 1107, "12 and 13 were the rebuild's tail"
    assert caught_up_deltas(meters, pairs, 11, 20, 20)[day] == 1015, "from the mark on only"
    assert caught_up_deltas(meters, pairs, 15, 20, 20) == {}


def test_a_consumed_event_is_left_out_of_its_own_meter_only() -> None:
    """The ledger counted a consume for the meter it named; the type's other meters count the
    event as a fact. A mark naming no meter (events recorded before marks named one) is left
    out of every meter, as it was then."""
    meters = MeterIndex([TOKENS, CALLS])
    mark = consume_mark("tokens", period_of(NOW, Period.DAY))
    assert mark == "tokens D:2026-12-31"
    events = [event(1, 7, consumed=True, mark=mark), event(2, 5), event(3, 4, consumed=True)]
    facts = usage_deltas(meters, events, facts_only=True)
    assert facts[("t1", "tokens", "D:2026-12-31")] == 5
    assert facts[("t1", "calls", "D:2026-12-31")] == 2, "counted for calls: consume counted it for tokens only"
    assert consumed_deltas(meters, events) == {
        ("t1", "tokens", "D:2026-12-31"): 11,
        ("t1", "tokens", "M:2026-12"): 11,
        ("t1", "calls", "D:2026-12-31"): 1,
        ("t1", "calls", "M:2026-12"): 1,
    }


def test_thresholds_are_reached_at_their_percentage_and_crossed_once() -> None:
    e = entitlement(200, thresholds=[50, 100, 150])
    assert not reached(Decimal(99), Decimal(200), 50) and reached(Decimal(100), Decimal(200), 50)
    assert reached(Decimal("0.001"), Decimal(0), 100) and not reached(Decimal(0), Decimal(0), 100)
    assert crossed(Decimal(0), Decimal(100), e) == [50]
    assert crossed(Decimal(100), Decimal(300), e) == [100, 150]
    assert crossed(Decimal(300), Decimal(400), e) == []


def test_a_batch_crosses_each_threshold_at_the_event_that_reaches_it() -> None:
    meters = MeterIndex([TOKENS])
    quota = Quota(entitlement(20, thresholds=[50, 100]), "plan", "pro")
    events = [event(n, 4) for n in range(6)]  # 4, 8, 12, 16, 20, 24
    found = crossings({("t1", "tokens", "D:2026-12-31"): Decimal(0)}, events, meters, {("t1", "tokens"): quota})
    assert [(c.threshold, c.used) for c in found] == [(50, Decimal(12)), (100, Decimal(20))]
    assert found[0].id == notification_id("t1", "tokens", period_of(NOW, Period.DAY), 50)
    assert len({c.id for c in found}) == 2
    again = crossings({("t1", "tokens", "D:2026-12-31"): Decimal(24)}, events, meters, {("t1", "tokens"): quota})
    assert again == [], "usage folded before counts: nothing crossed twice"


def test_a_consume_puts_its_amount_at_the_meters_value_path() -> None:
    assert consume_event_data(TOKENS, Decimal(30), {"model": "large", "usage": {"cached": 2}}) == {
        "model": "large",
        "usage": {"cached": 2, "tokens": 30},
    }
    assert consume_event_data(TOKENS, Decimal("1.5"), None) == {"usage": {"tokens": 1.5}}
    assert consume_event_data(CALLS, Decimal(1), {"a": 1}) == {"a": 1}
    subject_sum = MeterDefinition(slug="s", event_type="x", aggregation=Aggregation.SUM, value_property="$.subject")
    with pytest.raises(ValueError, match="not from data"):
        consume_event_data(subject_sum, Decimal(1), None)


@pytest.mark.parametrize("value", [True, "5", None, [1], float("nan"), float("inf"), -1, 10**12, 0.0001])
def test_bad_quantities_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        exact_quantity(value, name="amount", positive=True)


def test_quantities_are_exact() -> None:
    assert exact_quantity(0, name="limit", positive=False) == 0
    assert str(exact_quantity(1000, name="limit", positive=False)) == "1000"
    assert exact_quantity(0.1, name="amount", positive=True) == Decimal("0.1")
    assert exact_quantity(999_999_999_999.999, name="amount", positive=True) == Decimal("999999999999.999")
    with pytest.raises(ValueError):
        exact_quantity(0, name="amount", positive=True)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["t1", "t2"]),
            st.one_of(st.integers(-50, 50), st.sampled_from(["1.5", "x", None])),
            st.integers(0, 3 * 86_400),
        ),
        max_size=40,
    )
)
def test_usage_from_the_buckets_equals_usage_from_the_events(specs: list[tuple[str, object, int]]) -> None:
    meters = MeterIndex([TOKENS, CALLS])
    events = [event(n, tokens, at=NOW - timedelta(seconds=ago), tenant=tenant) for n, (tenant, tokens, ago) in enumerate(specs)]
    deltas: dict = {}
    for n, e in enumerate(events):
        apply(deltas, meters, e, n)
    from_buckets = usage_from_buckets(meters, deltas)
    from_events = usage_deltas(meters, events, facts_only=False)
    assert {k: v for k, v in from_buckets.items() if v} == {k: v for k, v in from_events.items() if v}
