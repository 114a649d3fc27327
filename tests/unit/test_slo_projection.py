"""The SLO projection (projections.slos): which events count, minute buckets, SLI, budget, burn
rates and the multi-window alerts, with answers worked out by hand."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from projections import slos
from projections.slos import GoodTotal
from schemas.envelope import Envelope
from schemas.slos import SloBody, SloWindow

PROPS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T0_EPOCH = int(T0.timestamp())
_serial = iter(range(10**9))

AVAILABILITY = {
    "event_type": "inference",
    "sli": "availability",
    "status_property": "$.data.status",
    "objective": 99,
    "window": "30d",
}
LATENCY = {
    "event_type": "inference",
    "sli": "latency",
    "latency_property": "$.data.ms",
    "threshold_ms": 500,
    "objective": 99,
    "window": "7d",
}


def ev(data: Any = None, *, tenant: str = "t1", at: datetime = T0, type_: str = "inference", source: str = "src") -> Envelope:
    n = next(_serial)
    return Envelope(
        id=f"e{n}",
        type=type_,
        tenant_id=tenant,
        source=source,
        source_id=f"s{n}",
        event_time=at,
        recorded_time=at,
        data=data,
        subject=None,
        extensions={},
    )


def compiled(body: dict[str, Any], owner: str = "_platform", version: int = 1) -> slos.CompiledSlo:
    return slos.compile_slo(owner, "s", version, SloBody.model_validate(body))


def fold(slo: slos.CompiledSlo, events: list[Envelope]) -> dict[slos.Bucket, GoodTotal]:
    return slos.fold_batch(slos.SloIndex([slo]), events)[0]


def test_availability_judges_by_status_and_counts_only_what_it_can_judge() -> None:
    slo = compiled({**AVAILABILITY, "match": {"$.data.model": "large", "$.data.stream": True}})
    assert slos.judge(slo, ev({"model": "large", "stream": True, "status": 499})) is True
    assert slos.judge(slo, ev({"model": "large", "stream": True, "status": 500})) is False
    assert slos.judge(slo, ev({"model": "large", "stream": True, "status": "503"})) is False  # a numeric string
    assert slos.judge(slo, ev({"model": "large", "stream": True})) is None  # no status: not judged
    assert slos.judge(slo, ev({"model": "large", "stream": True, "status": "oops"})) is None
    assert slos.judge(slo, ev({"model": "large", "stream": 1, "status": 200})) is None  # true is not 1
    assert slos.judge(slo, ev({"model": "small", "stream": True, "status": 200})) is None
    assert slos.judge(slo, ev({"model": "large", "stream": True, "status": 200}, type_="call")) is None


def test_latency_is_good_up_to_and_including_the_threshold() -> None:
    slo = compiled(LATENCY)
    assert [slos.judge(slo, ev({"ms": ms})) for ms in (0, 500, 500.5, 501, None)] == [True, True, False, False, None]


def test_a_tenants_slo_counts_its_own_events_the_platforms_every_tenants() -> None:
    mine, every = compiled(AVAILABILITY, owner="t1"), compiled(AVAILABILITY)
    other = ev({"status": 200}, tenant="t2")
    assert slos.judge(mine, other) is None and slos.judge(every, other) is True


def test_the_platforms_api_calls_are_the_apis_own_records_not_a_tenants_events_of_that_type() -> None:
    """Any tenant could send events of type `api_call` with the status it liked: the platform's SLO
    over the API's calls counted them, paging for errors that never were, or hiding real ones."""
    body = {**AVAILABILITY, "event_type": "api_call"}
    platforms, tenants = compiled(body), compiled(body, owner="t1")
    recorded = ev({"status": 200}, type_="api_call", source="omni://api")
    forged = ev({"status": 503}, type_="api_call", source="gw")
    assert (slos.judge(platforms, recorded), slos.judge(platforms, forged)) == (True, None)
    assert (slos.judge(tenants, recorded), slos.judge(tenants, forged)) == (True, False), "a tenant's SLO, its own events"


def test_bucket_boundary_and_a_late_event() -> None:
    """12:00:59.999999 is still minute 12:00; 12:01:00 is 12:01. An event of 11:58 folded last
    lands in 11:58, as it would have on time."""
    slo = compiled(AVAILABILITY)
    events = [
        ev({"status": 200}, at=T0 + timedelta(seconds=59, microseconds=999_999)),
        ev({"status": 503}, at=T0 + timedelta(minutes=1)),
        ev({"status": 200}, at=T0 + timedelta(minutes=1, seconds=30), tenant="t2"),
        ev({"status": 502}, at=T0 - timedelta(minutes=2)),  # late
    ]
    key = slo.fold_id
    assert fold(slo, events) == {
        slos.Bucket(key, "t1", T0_EPOCH): GoodTotal(1, 1),
        slos.Bucket(key, "t1", T0_EPOCH + 60): GoodTotal(0, 1),
        slos.Bucket(key, "t2", T0_EPOCH + 60): GoodTotal(1, 1),
        slos.Bucket(key, "t1", T0_EPOCH - 120): GoodTotal(0, 1),
    }


def test_windows_end_with_the_current_minute() -> None:
    """At 12:05:30 every window ends at 12:06 (exclusive): 5m is [12:01, 12:06)."""
    end = slos.window_end(T0 + timedelta(minutes=5, seconds=30))
    assert end == T0_EPOCH + 6 * 60
    spans = slos.spans(end, SloWindow.D7)
    assert spans["5m"] == (T0_EPOCH + 60, end)
    assert spans["slo"] == (end - 7 * 86400, end)
    minutes = {T0_EPOCH: GoodTotal(1, 1), T0_EPOCH + 60: GoodTotal(0, 2), T0_EPOCH + 5 * 60: GoodTotal(3, 3)}
    assert slos.counts_in(minutes, *spans["5m"]) == GoodTotal(3, 5)  # 12:00 is outside, 12:01 and 12:05 inside


def test_report_by_hand_for_a_30_day_slo() -> None:
    """99.9%: 0.1% may be bad. 10,000 events over 30 days, 30 bad: 10 allowed, 30 consumed (3 budgets),
    -20 remaining. Last hour 1,000 events, 20 bad: 2% / 0.1% = burn 20; last 5m 100 events, 2 bad:
    burn 20 too; both over 14.4: page fires."""
    counts = {label: GoodTotal(0, 0) for label in slos.BURN_WINDOWS}
    counts.update(
        {
            "slo": GoodTotal(9970, 10000),
            "5m": GoodTotal(98, 100),
            "30m": GoodTotal(495, 500),  # 1% / 0.1% = 10
            "1h": GoodTotal(980, 1000),
            "2h": GoodTotal(1980, 2000),  # 20 bad: burn 10
            "6h": GoodTotal(3980, 4000),  # burn 5
            "1d": GoodTotal(5980, 6000),  # burn 3.33...
            "3d": GoodTotal(9970, 10000),  # burn 3
        }
    )
    report = slos.report(T0_EPOCH, counts, 99.9, SloWindow.D30)
    assert report.sli == 0.997
    assert (report.budget.total, report.budget.consumed, report.budget.remaining) == (10.0, 30, -20.0)
    assert (report.budget.consumed_share, report.budget.remaining_share) == (3.0, -2.0)
    assert report.burn_rates["1h"] == 20.0 and report.burn_rates["30m"] == 10.0 and report.burn_rates["3d"] == 3.0
    assert report.page  # 1h 20 > 14.4 and 5m 20 > 14.4
    assert report.ticket  # 1d 3.33 > 3 and 2h 10 > 3
    calmer = {**counts, "5m": GoodTotal(100, 100)}  # the burn has stopped: 1h/5m no longer pages
    again = slos.report(T0_EPOCH, calmer, 99.9, SloWindow.D30)
    assert not again.page, "6h burns 5 < 6: the slow page stays quiet too"


def test_thresholds_scale_with_the_window() -> None:
    """The workbook's 30-day table, and the same budget shares over 7 and 28 days:
    share x window / long window."""
    page_fast, page_slow = slos.PAGE
    ticket_fast, ticket_slow = slos.TICKET
    assert [slos.threshold(r, SloWindow.D30) for r in (page_fast, page_slow, ticket_fast, ticket_slow)] == [
        Decimal("14.4"),
        Decimal("6"),
        Decimal("3"),
        Decimal("1"),
    ]
    # 7 days = 168 hours: 0.02 x 168 / 1 = 3.36; 0.05 x 168 / 6 = 1.4; 0.1 x 168 / 24 = 0.7; 0.1 x 168 / 72.
    assert [slos.threshold(r, SloWindow.D7) for r in (page_fast, page_slow, ticket_fast)] == [
        Decimal("3.36"),
        Decimal("1.4"),
        Decimal("0.7"),
    ]
    assert slos.threshold(ticket_slow, SloWindow.D7) == Decimal("16.8") / 72
    assert slos.threshold(page_fast, SloWindow.D28) == Decimal("13.44")


def test_a_7_day_slo_pages_where_a_30_day_one_would_not() -> None:
    """Burn 4 over every window: above the 7-day page threshold 3.36, below the 30-day 14.4 and 6."""
    counts = dict.fromkeys(["slo", *slos.BURN_WINDOWS], GoodTotal(96, 100))
    assert slos.report(T0_EPOCH, counts, 99, SloWindow.D7).burn_rates["1h"] == 4.0
    assert slos.report(T0_EPOCH, counts, 99, SloWindow.D7).page
    assert not slos.report(T0_EPOCH, counts, 99, SloWindow.D30).page
    assert slos.report(T0_EPOCH, counts, 99, SloWindow.D30).ticket  # 4 > 3 and 4 > 1


def test_no_data_is_no_data_never_100_percent() -> None:
    counts = dict.fromkeys(["slo", *slos.BURN_WINDOWS], GoodTotal(0, 0))
    report = slos.report(T0_EPOCH, counts, 99, SloWindow.D30)
    assert report.sli is None and report.budget.consumed is None and report.budget.remaining_share is None
    assert set(report.burn_rates.values()) == {None}
    assert not report.page and not report.ticket


@pytest.mark.parametrize(
    "change",
    [
        {"objective": 100},
        {"objective": 0},
        {"objective": -1},
        {"window": "14d"},
        {"sli": "latency", "status_property": None, "latency_property": "$.data.ms"},
        {"match": {"data.model": "x"}},
        {"status_property": "$.data..status"},
        {"status_property": None},
    ],
)
def test_bad_definitions_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SloBody.model_validate({k: v for k, v in {**AVAILABILITY, **change}.items() if v is not None})


statuses = st.lists(
    st.tuples(st.sampled_from([200, 404, 500, 503, None]), st.integers(0, 3 * 3600), st.sampled_from(["t1", "t2"])),
    max_size=40,
)


@PROPS
@given(statuses, st.randoms(use_true_random=False))
def test_the_fold_ignores_order_and_batching(found: list[tuple[int | None, int, str]], rnd: random.Random) -> None:
    """Any order, any split into batches merged by addition: the same buckets (what lets a late
    event land where it belongs, and lets catch-up and the live fold add up)."""
    slo = compiled(AVAILABILITY)
    events = [ev({"status": s} if s is not None else {}, at=T0 + timedelta(seconds=at), tenant=t) for s, at, t in found]
    whole = fold(slo, events)
    shuffled = events[:]
    rnd.shuffle(shuffled)
    cut = rnd.randint(0, len(shuffled))
    merged: dict[slos.Bucket, GoodTotal] = {}
    for part in (fold(slo, shuffled[:cut]), fold(slo, shuffled[cut:])):
        for key, counts in part.items():
            known = merged.get(key, slos.NONE)
            merged[key] = GoodTotal(known.good + counts.good, known.total + counts.total)
    assert merged == whole
    judged = [s for s, _, _ in found if s is not None]
    assert sum(c.total for c in whole.values()) == len(judged)
    assert sum(c.good for c in whole.values()) == sum(1 for s in judged if s < 500)


@PROPS
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from([90.0, 99.0, 99.5, 99.9, 99.99]))
def test_budget_adds_up(good: int, bad: int, objective: float) -> None:
    counts = GoodTotal(good, good + bad)
    budget = slos.budget(counts, objective)
    if good + bad == 0:
        assert budget.total is None
        return
    assert budget.consumed == bad
    assert budget.total is not None and budget.remaining is not None
    assert budget.total + 0 == pytest.approx(budget.consumed + budget.remaining)
    assert budget.consumed_share is not None and budget.remaining_share is not None
    assert budget.consumed_share + budget.remaining_share == pytest.approx(1)
    rate = slos.burn_rate(counts, objective)
    assert rate == pytest.approx(budget.consumed_share), "over the SLO's own window, burn rate is the share consumed"


def test_an_alert_fires_above_its_threshold_not_at_it() -> None:
    """99.9%: 144 bad of 10,000 is a burn of exactly 14.4, the 30-day fast page's threshold."""
    at = slos.burn_rate(GoodTotal(10000 - 144, 10000), 99.9)
    assert at == 14.4
    assert not slos.firing([slos.PAGE[0]], {"1h": at, "5m": at}, SloWindow.D30)
    above = slos.burn_rate(GoodTotal(10000 - 145, 10000), 99.9)
    assert slos.firing([slos.PAGE[0]], {"1h": above, "5m": above}, SloWindow.D30)
    assert not slos.firing([slos.PAGE[0]], {"1h": above, "5m": None}, SloWindow.D30), "both windows must burn"
