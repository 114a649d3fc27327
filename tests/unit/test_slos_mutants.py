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


# The batch's judged runs, the burn-rate windows, and the alerts' ids ---------------------------


def test_a_batch_judges_each_slo_in_runs_of_one_minute_in_log_order() -> None:
    """Runs are [minute, good, total]: a new run whenever the minute changes, even back to one
    seen before; events of another type, and events an SLO cannot judge, are skipped, not the end."""
    slo = compiled(AVAILABILITY)
    later = datetime(2024, 3, 1, 12, 1, 30, tzinfo=UTC)
    events = [
        ev({"status": 200}, type_="other"),
        ev({"status": 200}),
        ev({"status": 503}),
        ev({}),  # no status: not judged
        ev({"status": 200}),
        ev({"status": 200}, at=later),
        ev({"status": 200}),
        ev({"status": 503}),
    ]
    view, judged = slos.fold_batch(slos.SloIndex([slo]), events)
    assert judged == {slo.fold_id: [[T0_EPOCH, 2, 3], [T0_EPOCH + 60, 1, 1], [T0_EPOCH, 1, 2]]}
    assert view == {
        Bucket(slo.fold_id, "t1", T0_EPOCH): GoodTotal(3, 5),
        Bucket(slo.fold_id, "t1", T0_EPOCH + 60): GoodTotal(1, 1),
    }


def test_a_run_starting_with_a_bad_event_counts_the_good_ones_after_it() -> None:
    slo = compiled(AVAILABILITY)
    _, judged = slos.fold_batch(slos.SloIndex([slo]), [ev({"status": 503}), ev({"status": 200}), ev({"status": 200})])
    assert judged == {slo.fold_id: [[T0_EPOCH, 2, 3]]}


END = T0_EPOCH + 3 * 86400  # windows ending 3 days after T0: the 3-day window starts at T0


def sums(windows: slos.BurnWindows) -> dict[str, tuple[int, int]]:
    return {label: (c.good, c.total) for label, c in windows.sums.items()}


def test_burn_windows_count_each_minute_in_every_window_that_holds_it() -> None:
    """[end - window, end): the minute at a window's start is in it, the minute at the end is in none."""
    windows = slos.BurnWindows(END, {T0_EPOCH: GoodTotal(1, 2), END - 300: GoodTotal(3, 4), END: GoodTotal(5, 6)})
    assert sums(windows) == {
        "5m": (3, 4),
        "30m": (3, 4),
        "1h": (3, 4),
        "2h": (3, 4),
        "6h": (3, 4),
        "1d": (3, 4),
        "3d": (4, 6),
    }
    assert not windows.empty()


def test_burn_windows_add_a_minute_to_the_windows_that_hold_it_and_forget_what_none_hold() -> None:
    windows = slos.BurnWindows(END, {})
    assert windows.empty()
    windows.add(T0_EPOCH - 60, 1, 1)  # before every window: not even kept
    assert windows.empty() and windows.minutes == {}
    windows.add(T0_EPOCH, 0, 1)  # the 3-day window's first minute
    assert not windows.empty()
    windows.add(END - 300, 1, 1)  # the 5-minute window's first minute
    windows.add(END - 300, 1, 2)
    windows.add(END, 7, 7)  # the open minute: counted once the end moves past it
    assert sums(windows) == {
        "5m": (2, 3),
        "30m": (2, 3),
        "1h": (2, 3),
        "2h": (2, 3),
        "6h": (2, 3),
        "1d": (2, 3),
        "3d": (2, 4),
    }
    assert windows.minutes == {T0_EPOCH: GoodTotal(0, 1), END - 300: GoodTotal(2, 3), END: GoodTotal(7, 7)}


def test_advancing_brings_the_minute_at_the_end_in_and_takes_each_windows_oldest_out() -> None:
    windows = slos.BurnWindows(END, {T0_EPOCH: GoodTotal(1, 2), END - 300: GoodTotal(3, 4), END: GoodTotal(5, 6)})
    windows.advance()
    assert windows.end == END + 60
    assert sums(windows) == {
        "5m": (5, 6),  # END - 300 has left it
        "30m": (8, 10),
        "1h": (8, 10),
        "2h": (8, 10),
        "6h": (8, 10),
        "1d": (8, 10),
        "3d": (8, 10),
    }
    assert windows.minutes == {END - 300: GoodTotal(3, 4), END: GoodTotal(5, 6)}  # T0 is in no window now
    for _ in range(5):
        windows.advance()
    assert sums(windows)["5m"] == (0, 0) and sums(windows)["30m"] == (8, 10)


def test_advancing_keeps_a_minute_ahead_of_the_end_until_it_enters() -> None:
    windows = slos.BurnWindows(END, {})
    windows.add(END + 60, 1, 1)
    windows.advance()
    assert windows.minutes == {END + 60: GoodTotal(1, 1)} and windows.empty()
    windows.advance()
    assert sums(windows)["5m"] == (1, 1)


def test_the_first_evaluation_counts_the_minutes_before_it_without_an_alert_state() -> None:
    """No state yet, but the store holds a bad minute just before: minute 0 is evaluated with it."""
    before = {T0_EPOCH - 60: GoodTotal(0, 10)}
    state, found = slos.evaluate_alerts(None, before, [[T0_EPOCH, 10, 10], [T0_EPOCH + 60, 1, 1]], 99.0, SloWindow.D30)
    assert [(t.alert, t.firing, t.at) for t in found] == [("page", True, T0_EPOCH + 60), ("ticket", True, T0_EPOCH + 60)]
    assert state == slos.AlertState(T0_EPOCH + 60, frozenset({"page", "ticket"}))


def test_after_days_of_silence_the_minute_skipped_to_counts() -> None:
    """Nothing for 4 days, then a minute of bad events: evaluated when the next minute comes, it pages."""
    later = T0_EPOCH + 4 * 86400
    judged = [[T0_EPOCH, 1, 1], [later, 0, 10], [later + 60, 1, 1]]
    _, found = slos.evaluate_alerts(None, {}, judged, 99.0, SloWindow.D30)
    assert [(t.alert, t.firing, t.at) for t in found] == [("page", True, later + 60), ("ticket", True, later + 60)]


def test_an_alerts_id_names_its_slo_alert_direction_and_moment() -> None:
    """The ids of notices already sent: the same name must give the same id in every version."""
    from uuid import NAMESPACE_URL, uuid5

    notices = uuid5(NAMESPACE_URL, "https://omni.dev/ids/notifications")
    fired = slos.alert_notice_id("o/s/1", slos.Transition("page", True, T0_EPOCH, {}))
    resolved = slos.alert_notice_id("o/s/1", slos.Transition("ticket", False, T0_EPOCH, {}))
    assert fired == str(uuid5(notices, f"slo-alert/o/s/1/page/fired/{T0_EPOCH}"))
    assert resolved == str(uuid5(notices, f"slo-alert/o/s/1/ticket/resolved/{T0_EPOCH}"))
