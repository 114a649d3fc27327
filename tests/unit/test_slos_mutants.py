"""The SLO projection at its edges: what `make mutation` found no fast test held in projections/slos.py
(mutants that survived, and `history`, which no test ran)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from projections import slos
from projections.slos import Bucket, Budget, GoodTotal, Report
from schemas.slos import SloWindow
from tests.unit.test_slo_projection import AVAILABILITY, LATENCY, T0_EPOCH, compiled, ev


def test_an_slo_version_folds_under_its_owner_name_and_version() -> None:
    slo = compiled(AVAILABILITY, owner="tenant-a", version=3)
    assert (slo.fold_id, slo.owner) == ("tenant-a/s/3", "tenant-a")


def test_a_match_on_an_object_or_a_list_never_holds() -> None:
    slo = compiled({**AVAILABILITY, "match": {"$.data.route": "/x"}})
    assert slos.judge(slo, ev({"status": 200, "route": "/x"})) is True
    assert slos.judge(slo, ev({"status": 200, "route": {"/x": 1}})) is None
    assert slos.judge(slo, ev({"status": 200, "route": ["/x"]})) is None


def test_every_slo_of_the_type_counts_an_event_even_after_one_that_does_not() -> None:
    skipping = compiled({**AVAILABILITY, "match": {"$.data.model": "large"}})
    counting = compiled(LATENCY, owner="_platform", version=2)
    view, _ = slos.fold_batch(slos.SloIndex([skipping, counting]), [ev({"status": 200, "ms": 100, "model": "small"})])
    assert view == {Bucket("_platform/s/2", "t1", T0_EPOCH): GoodTotal(1, 1)}


def test_counts_in_a_span_sum_its_minutes_and_leave_out_its_end() -> None:
    minutes = {0: GoodTotal(1, 2), 60: GoodTotal(3, 4), 120: GoodTotal(5, 6)}
    assert slos.counts_in(minutes, 0, 120) == GoodTotal(4, 6)
    assert slos.counts_in(minutes, 60, 121) == GoodTotal(8, 10)


def test_history_lists_every_window_with_the_last_cut_at_the_end() -> None:
    minutes = {0: GoodTotal(1, 2), 60: GoodTotal(3, 4), 180: GoodTotal(5, 6), 300: GoodTotal(7, 7)}
    assert slos.history(minutes, 0, 300, 120) == [(0, GoodTotal(4, 6)), (120, GoodTotal(5, 6)), (240, GoodTotal(0, 0))]
    assert slos.history(minutes, 60, 60, 60) == []


def test_an_alert_fires_only_when_both_windows_burn_above_the_threshold() -> None:
    rule = slos.AlertRule("1h", "5m", slos.PAGE[0].budget_share)
    limit = float(slos.threshold(rule, SloWindow.D30))
    assert limit == 14.4
    assert slos.firing([rule], {"1h": 14.5, "5m": 14.5}, SloWindow.D30)
    assert not slos.firing([rule], {"1h": limit, "5m": 14.5}, SloWindow.D30)
    assert not slos.firing([rule], {"1h": 14.5, "5m": limit}, SloWindow.D30)


def test_a_report_is_whole_as_of_the_end_of_its_minute() -> None:
    end = int(datetime(2024, 3, 1, 12, 1, tzinfo=UTC).timestamp())
    quiet = {label: GoodTotal(0, 0) for label in slos.BURN_WINDOWS}
    found = slos.report(end, {"slo": GoodTotal(95, 100), **quiet}, 90.0, SloWindow.D30)
    assert found == Report(
        as_of="2024-03-01T12:01:00.000000Z",
        good=95,
        total=100,
        sli=0.95,
        budget=Budget(10.0, 5, 5.0, 0.5, 0.5),
        burn_rates=dict.fromkeys(slos.BURN_WINDOWS),
        page=False,
        ticket=False,
    )


def test_a_report_is_as_of_utc_whatever_the_servers_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        end = int(datetime(2024, 3, 1, 12, 1, tzinfo=UTC).timestamp())
        quiet = {label: GoodTotal(0, 0) for label in ("slo", *slos.BURN_WINDOWS)}
        assert slos.report(end, quiet, 99.0, SloWindow.D30).as_of == "2024-03-01T12:01:00.000000Z"
    finally:
        monkeypatch.undo()
        time.tzset()
