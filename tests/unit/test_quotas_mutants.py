"""The quota core at its edges: what `make mutation` found no fast test held (mutants that survived,
or parts of projections.quotas no test ran: which meters can hold a quota, and the periods a rebuild
of the hot counters fills)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import pytest

from projections import plans
from projections.meters import MeterIndex, apply
from projections.quotas import (
    Crossing,
    Decision,
    PeriodKey,
    Quota,
    amount_of,
    consume_event_data,
    crossings,
    decide,
    in_effect,
    is_additive,
    minus,
    period_of,
    periods_around,
    reached,
    reached_now,
    usage_deltas,
    usage_from_buckets,
)
from schemas.envelope import Envelope
from schemas.meters import Aggregation, MeterDefinition
from schemas.plans import Period
from tests.unit.test_quota_decisions import NOW, TOKENS, entitlement, event


@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_only_sum_and_count_meters_are_additive(aggregation: Aggregation) -> None:
    meter = MeterDefinition(
        slug="m",
        event_type="inference",
        aggregation=aggregation,
        value_property=None if aggregation is Aggregation.COUNT else "$.data.v",
    )
    assert is_additive(meter) is (aggregation in (Aggregation.SUM, Aggregation.COUNT))


def day(text: str) -> PeriodKey:
    return PeriodKey.parse(f"D:{text}")


def month(text: str) -> PeriodKey:
    return PeriodKey.parse(f"M:{text}")


@pytest.mark.parametrize(
    ("moment", "periods"),
    [
        (
            datetime(2026, 12, 15, 12, tzinfo=UTC),
            [day("2026-12-14"), day("2026-12-15"), day("2026-12-16"), month("2026-12")],
        ),
        (
            datetime(2026, 12, 31, 23, 30, tzinfo=UTC),
            [day("2026-12-30"), day("2026-12-31"), day("2027-01-01"), month("2026-12"), month("2027-01")],
        ),
        (
            datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
            [day("2026-12-31"), day("2027-01-01"), day("2027-01-02"), month("2026-12"), month("2027-01")],
        ),
        (  # 00:30 at UTC+1 is 23:30 UTC the day before
            datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
            [day("2026-02-27"), day("2026-02-28"), day("2026-03-01"), month("2026-02"), month("2026-03")],
        ),
    ],
)
def test_around_an_instant_are_the_day_before_its_own_and_the_next_and_their_months(
    moment: datetime, periods: list[PeriodKey]
) -> None:
    assert periods_around(moment) == periods
    assert [p.period for p in periods_around(moment)][:3] == [Period.DAY] * 3


# Decisions, usage and crossings at their edges (mutants that survived) -----------------------------

NOTICES = uuid5(NAMESPACE_URL, "https://omni.dev/ids/notifications")
DAY_31 = PeriodKey.parse("D:2026-12-31")
MAXIMUM = MeterDefinition(slug="peak", event_type="inference", aggregation=Aggregation.MAX, value_property="$.data.usage.tokens")
# A second meter of the same events, defined first: it skips a value that is no number.
STRICT = MeterDefinition(slug="strict", event_type="inference", aggregation=Aggregation.SUM, value_property="$.data.strict")


def notice_id(tenant: str, meter: str, period: PeriodKey, threshold: int) -> str:
    return str(uuid5(NOTICES, f"quota-threshold/{tenant}/{meter}/{period.text}/{threshold}"))


def test_an_accepted_consume_under_a_limit_says_the_limit_and_what_remains() -> None:
    assert decide(Decimal(2), Decimal(3), entitlement(10)) == Decision(True, Decimal(5), Decimal(10), Decimal(5))
    assert decide(Decimal(2), Decimal(30), entitlement(10, hard=False)) == Decision(True, Decimal(32), Decimal(10), Decimal(0))


def test_a_plans_quota_names_the_plan() -> None:
    e = entitlement(100)
    assert in_effect("pro", [e], []) == {"tokens": Quota(e, "plan", "pro")}


def test_a_non_additive_meter_counts_toward_no_usage() -> None:
    meters = MeterIndex([MAXIMUM, TOKENS])
    assert amount_of(meters.by_slug["peak"], event(1, 5)) is None
    assert usage_deltas(meters, [event(1, 5)], facts_only=False) == {
        ("t1", "tokens", "D:2026-12-31"): Decimal(5),
        ("t1", "tokens", "M:2026-12"): Decimal(5),
    }


def test_facts_after_a_consume_or_an_unmetered_event_still_count() -> None:
    meters = MeterIndex([TOKENS])
    unmetered = Envelope(
        id="x", type="other", tenant_id="t1", source="gw", source_id="x", event_time=NOW, recorded_time=NOW, data={}
    )
    events = [event(1, 7, consumed=True), unmetered, event(2, 5)]
    assert usage_deltas(meters, events, facts_only=True)[("t1", "tokens", "D:2026-12-31")] == Decimal(5)


def test_a_crossing_is_whole_and_found_after_events_and_meters_that_count_nothing() -> None:
    meters = MeterIndex([STRICT, MAXIMUM, TOKENS])
    quota = Quota(entitlement(10, thresholds=[50]), "plan", "pro")
    unmetered = Envelope(
        id="x", type="other", tenant_id="t1", source="gw", source_id="x", event_time=NOW, recorded_time=NOW, data={}
    )
    quotas = {("t1", "strict"): Quota(entitlement(1), "plan", "pro"), ("t1", "tokens"): quota}
    found = crossings({}, [unmetered, event(1, 5)], meters, quotas)  # nothing counted before: usage starts at zero
    assert found == [Crossing(notice_id("t1", "tokens", DAY_31, 50), "t1", "tokens", DAY_31, 50, Decimal(10), Decimal(5), NOW)]


def test_usage_less_what_was_taken_leaves_out_what_comes_to_zero() -> None:
    a, b, c, d = (("t1", m, "D:2026-12-31") for m in "abcd")
    usage = {a: Decimal(5), b: Decimal(3)}
    assert minus(usage, {a: Decimal(5), c: Decimal(2), d: Decimal(0)}) == {b: Decimal(3), c: Decimal(-2)}
    assert minus(usage, {b: Decimal(1)}) == {a: Decimal(5), b: Decimal(2)}
    assert usage == {a: Decimal(5), b: Decimal(3)}, "the usage given is left as it was"


def test_a_threshold_is_reached_only_at_its_percentage_not_a_little_under() -> None:
    assert not reached(Decimal("99.5"), Decimal(100), 100)
    assert not reached(Decimal("49.9"), Decimal(100), 50) and reached(Decimal(50), Decimal(100), 50)


def test_a_sweep_names_every_threshold_reached_as_of_the_change() -> None:
    quota = Quota(entitlement(20, thresholds=[50, 80, 100]), "override", "pro")
    at = NOW + timedelta(minutes=5)
    assert reached_now("t1", "tokens", DAY_31, quota, Decimal(16), at) == [
        Crossing(notice_id("t1", "tokens", DAY_31, 50), "t1", "tokens", DAY_31, 50, Decimal(20), Decimal(16), at),
        Crossing(notice_id("t1", "tokens", DAY_31, 80), "t1", "tokens", DAY_31, 80, Decimal(20), Decimal(16), at),
    ]


def test_a_consume_writes_a_whole_amount_as_a_json_integer() -> None:
    assert json.dumps(consume_event_data(TOKENS, Decimal(30), None)) == '{"usage": {"tokens": 30}}'
    assert json.dumps(consume_event_data(TOKENS, Decimal("30.00"), None)) == '{"usage": {"tokens": 30}}'
    assert json.dumps(consume_event_data(TOKENS, Decimal("1.5"), None)) == '{"usage": {"tokens": 1.5}}'


@pytest.mark.parametrize(("path", "data"), [("$.data.tokens", {"tokens": 4}), ("$.data.a.b", {"a": {"b": 4}})])
def test_a_consume_writes_its_amount_at_any_path_under_data(path: str, data: dict[str, Any]) -> None:
    meter = MeterDefinition(slug="s", event_type="x", aggregation=Aggregation.SUM, value_property=path)
    assert consume_event_data(meter, Decimal(4), None) == data


def test_a_consume_of_a_meter_reading_all_of_data_is_refused() -> None:
    meter = MeterDefinition(slug="s", event_type="x", aggregation=Aggregation.SUM, value_property="$.data")
    with pytest.raises(ValueError, match=r"reads its value from \$\.data, not from data"):
        consume_event_data(meter, Decimal(1), None)


def test_a_plan_published_without_entitlements_or_billing_has_none() -> None:
    published = Envelope(
        id="p", type="omni.plan.published", tenant_id="_platform", source="omni://control-plane", source_id="plans/free",
        event_time=NOW, recorded_time=NOW, data={"slug": "free", "version": 1},
    )  # fmt: skip
    assert plans.changes(published) == [plans.PlanPublished("free", 1, None, (), "2026-12-31T23:30:00.000000Z", {})]


def test_usage_from_buckets_counts_only_the_additive_meters_it_knows() -> None:
    meters = MeterIndex([MAXIMUM, TOKENS])
    deltas: dict = {}
    apply(deltas, meters, event(1, 5), 0)
    assert {key.meter for key in deltas} == {"peak", "tokens"}
    gone = next(key for key in deltas if key.meter == "tokens")
    deltas[gone._replace(meter="gone")] = deltas[gone]  # a bucket of a meter not in the index
    assert usage_from_buckets(meters, deltas) == {
        ("t1", "tokens", "D:2026-12-31"): Decimal(5),
        ("t1", "tokens", "M:2026-12"): Decimal(5),
    }


def test_the_period_of_an_instant_does_not_depend_on_the_servers_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        moment = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
        assert [period_of(moment, p).text for p in (Period.DAY, Period.MONTH)] == ["D:2026-11-30", "M:2026-11"]
        meters = MeterIndex([TOKENS])
        deltas: dict = {}
        apply(deltas, meters, event(1, 5, at=moment), 0)
        assert set(usage_from_buckets(meters, deltas)) == {("t1", "tokens", "D:2026-11-30"), ("t1", "tokens", "M:2026-11")}
    finally:
        monkeypatch.undo()
        time.tzset()
