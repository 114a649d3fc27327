"""SLO alert transitions folded by event time (projections.slos.evaluate_alerts): crafted streams
whose fired and resolved moments are worked out by hand, and the same transitions however the log
is cut into batches."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from projections import slos
from projections.slos import AlertState, GoodTotal, Transition
from schemas.envelope import Envelope
from schemas.slos import SloWindow
from tests.unit.test_slo_projection import AVAILABILITY, PROPS, T0, T0_EPOCH, compiled, ev

M = 60  # seconds in a minute


def minute(n: int, good: int, bad: int = 0) -> list[tuple[int, bool]]:
    """`good` good then `bad` bad judged events in minute n after T0."""
    return [(T0_EPOCH + n * M, True)] * good + [(T0_EPOCH + n * M, False)] * bad


def walk(judged: Sequence[tuple[int, bool]], batches: Sequence[int] = (), window: SloWindow = SloWindow.D30) -> list[Transition]:
    """Fold `judged` cut after each index in `batches`, as the store would between batches: the
    alert state and every minute's counts carried over. Every transition, in order."""
    state: AlertState | None = None
    stored: dict[int, GoodTotal] = {}
    found: list[Transition] = []
    cuts = [0, *sorted(set(batches)), len(judged)]
    for start, end in zip(cuts, cuts[1:], strict=False):
        part = judged[start:end]
        state, moved = slos.evaluate_alerts(state, dict(stored), runs(part), 99, window)
        found += moved
        for at, good in part:
            known = stored.get(at, GoodTotal(0, 0))
            stored[at] = GoodTotal(known.good + good, known.total + 1)
    return found


def runs(judged: Sequence[tuple[int, bool]]) -> list[list[int]]:
    """Consecutive events of one minute as one run [minute, good, total], as fold_batch gives them."""
    found: list[list[int]] = []
    for at, good in judged:
        if found and found[-1][0] == at:
            found[-1][1] += good
            found[-1][2] += 1
        else:
            found.append([at, int(good), 1])
    return found


def moments(found: Sequence[Transition]) -> list[tuple[str, str, int]]:
    """(alert, fired/resolved, minutes after T0 of the moment evaluated)."""
    return [(t.alert, "fired" if t.firing else "resolved", (t.at - T0_EPOCH) // M) for t in found]


def test_an_outage_minute_pages_then_each_alert_resolves_as_its_windows_dilute_it() -> None:
    """Objective 99 (1% may fail), 30 days. Minute 0: 10 good; minute 1: 10 bad; then 10 good a
    minute. Minute 1 is evaluated (windows ending 12:02) when minute 2's first event comes: every
    window holds 10 bad of 20, burn 50: page (14.4 and 6) and ticket (3 and 1) fire at minute 2.
    After minute k every window up to 6h holds 10 bad of 10(k+1): burn 100/(k+1). The page's 6h/30m
    rule holds while 100/(k+1) > 6, through k = 15 (the 5m window lost minute 1 at k = 6): it
    resolves when minute 16 is evaluated, at minute 17. The ticket's 3d/6h rule holds while
    100/(k+1) > 1, through k = 98: it resolves at minute 100 (burn exactly 1 is not above 1)."""
    judged = minute(0, 10) + minute(1, 0, 10)
    for n in range(2, 101):
        judged += minute(n, 10)
    found = walk(judged)
    assert moments(found) == [
        ("page", "fired", 2),
        ("ticket", "fired", 2),
        ("page", "resolved", 17),
        ("ticket", "resolved", 100),
    ]
    assert found[0].burn_rates == {label: 50.0 for label in slos.BURN_WINDOWS}
    assert found[2].burn_rates["30m"] == 100 / 17 and found[2].burn_rates["5m"] == 0.0


def test_a_minute_is_evaluated_when_a_later_minutes_event_arrives_not_before() -> None:
    """A bad event at 12:00:59.999999 belongs to minute 12:00: evaluated (1 bad of 2, burn 50) when
    the event of 12:01:00 arrives, so both alerts fire at 12:01. The same bad event at 12:01:00 is
    not in minute 12:00, whose windows hold one good event: nothing fires, and minute 12:01 waits
    for a later event."""
    slo = compiled(AVAILABILITY)

    def judged_of(events: list[Envelope]) -> list[tuple[int, bool]]:
        found = slos.fold_batch(slos.SloIndex([slo]), events)[1][slo.fold_id]
        return [(at, n < good) for at, good, total in found for n in range(total)]

    good, late_bad, on_the_minute = (
        ev({"status": 200}, at=T0),
        ev({"status": 503}, at=T0 + timedelta(seconds=59, microseconds=999_999)),
        ev({"status": 503}, at=T0 + timedelta(minutes=1)),
    )
    assert moments(walk(judged_of([good, late_bad, ev({"status": 200}, at=T0 + timedelta(minutes=1))]))) == [
        ("page", "fired", 1),
        ("ticket", "fired", 1),
    ]
    assert moments(walk(judged_of([good, on_the_minute]))) == []


def test_a_late_event_fires_late_in_the_minute_it_is_folded_not_in_its_own() -> None:
    """10 good a minute through minute 20; then 30 bad events of minute 5 arrive (late: minute 20
    is open). Minute 5 was evaluated long ago with good events only; the late ones count from the
    next evaluation on: minute 20, when minute 21's first event comes. Its windows ending 12:21:
    5m holds minutes 16..20, all good (burn 0); 30m and up hold all 240 events, 30 bad: burn 12.5.
    The page's 6h/30m rule (6) and the ticket's 1d/2h rule (3) fire at minute 21. On time, the same
    events would have fired both at minute 6 (minute 5's windows: 30 bad of 90, every window)."""
    on_time = [e for n in range(21) for e in minute(n, 10, 30 if n == 5 else 0)]
    late = [e for n in range(21) for e in minute(n, 10)] + minute(5, 0, 30) + minute(21, 1)
    assert moments(walk(on_time + minute(21, 1)))[:2] == [("page", "fired", 6), ("ticket", "fired", 6)]
    found = walk(late)
    assert moments(found) == [("page", "fired", 21), ("ticket", "fired", 21)]
    assert found[0].burn_rates["5m"] == 0.0 and found[0].burn_rates["30m"] == 12.5


def test_a_7_day_slo_pages_at_a_burn_rate_a_30_day_one_only_tickets() -> None:
    """5% failing (burn 5, objective 99). 30 days: page thresholds 14.4 and 6, not reached; ticket 3
    (1d/2h), reached. 7 days: thresholds scaled by 7/30: page 3.36 (1h/5m) and 1.4, reached."""
    judged = minute(0, 19, 1) + minute(1, 1)
    assert moments(walk(judged, window=SloWindow.D30)) == [("ticket", "fired", 1)]
    assert moments(walk(judged, window=SloWindow.D7)) == [("page", "fired", 1), ("ticket", "fired", 1)]


def test_silence_then_an_event_days_later_resolves_when_each_window_emptied() -> None:
    """Minute 0: 10 good, minute 1: 10 bad, then nothing until 4 days later. The walk evaluates
    every minute in between: the page's 30m window loses minute 1 at the evaluation of minute 31
    (windows ending 12:32), the ticket's 6h window at minute 361; then the 3-day window is empty
    and the walk skips to the late event's minute."""
    judged = minute(0, 10) + minute(1, 0, 10) + minute(4 * 1440, 1) + minute(4 * 1440 + 1, 1)
    found = walk(judged)
    assert moments(found) == [("page", "fired", 2), ("ticket", "fired", 2), ("page", "resolved", 32), ("ticket", "resolved", 362)]
    assert found[2].burn_rates["30m"] is None


def test_each_transition_has_an_id_of_its_own_and_the_same_id_again() -> None:
    fired = Transition("page", True, T0_EPOCH, {})
    ids = {
        slos.alert_notice_id("o/s/1", fired),
        slos.alert_notice_id("o/s/1", Transition("page", False, T0_EPOCH, {})),
        slos.alert_notice_id("o/s/1", Transition("ticket", True, T0_EPOCH, {})),
        slos.alert_notice_id("o/s/2", fired),
        slos.alert_notice_id("o/s/1", Transition("page", True, T0_EPOCH + M, {})),
    }
    assert len(ids) == 5 and slos.alert_notice_id("o/s/1", fired) in ids


SCENARIO = (
    [e for n in range(10) for e in minute(n, 10)]
    + minute(10, 2, 8)
    + [e for n in range(11, 40) for e in minute(n, 9, 1 if n % 7 == 0 else 0)]
    + minute(3, 0, 5)  # late
    + [e for n in range(40, 200, 3) for e in minute(n, 5, 1 if n % 11 == 0 else 0)]
    + minute(4 * 1440, 1)  # after days of silence
)


ONE_BATCH = walk(SCENARIO)


@settings(PROPS, max_examples=25)
@given(st.lists(st.integers(min_value=1, max_value=len(SCENARIO) - 1), max_size=12))
def test_the_same_log_gives_the_same_transitions_however_it_is_batched(cuts: list[int]) -> None:
    assert walk(SCENARIO, cuts) == ONE_BATCH


def test_the_scenario_has_transitions_worth_comparing() -> None:
    assert {(a, d) for a, d, _ in moments(ONE_BATCH)} == {
        ("page", "fired"),
        ("page", "resolved"),
        ("ticket", "fired"),
        ("ticket", "resolved"),
    }
