"""Edges of the meter fold and the query's roll-up that the broader tests pass by: windows of
moments that are not whole minutes, non-UTC clocks, the plan's pieces when a range holds exactly
one bucket boundary, meter_rows on rows as a database hands them (unsorted, unaligned), and the
types the stored states and window starts keep (PostgreSQL reads them as integers)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

from projections.meter_query import (
    EPOCH,
    MeterRow,
    Piece,
    meter_rows,
    plan,
    whole_range,
    window_bounds,
    window_start_of,
)
from projections.meters import (
    MAX_GROUP_VALUE_CHARS,
    MINUTE,
    MeterIndex,
    _group_key,
    apply,
    compile_meter,
    digest,
    micros_of,
    unique_token,
)
from schemas.envelope import Envelope
from schemas.meters import MeterDefinition, WindowSize


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def seconds(moment: datetime) -> int:
    return int(moment.timestamp())


MOMENT = at(2026, 3, 5, 10, 20, 30, 123456)


def event(data: dict, moment: datetime = MOMENT) -> Envelope:
    return Envelope(
        id="i", type="inference", tenant_id="t1", source="gw", source_id="e1", event_time=moment, recorded_time=moment, data=data
    )


# --- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "start", "end"),
    [
        (WindowSize.MINUTE, at(2026, 3, 5, 10, 20), at(2026, 3, 5, 10, 21)),
        (WindowSize.HOUR, at(2026, 3, 5, 10), at(2026, 3, 5, 11)),
        (WindowSize.DAY, at(2026, 3, 5), at(2026, 3, 6)),
        (WindowSize.MONTH, at(2026, 3, 1), at(2026, 4, 1)),
    ],
)
def test_a_window_starts_on_its_boundary_whatever_the_seconds_and_microseconds(size, start, end) -> None:
    assert window_bounds(at(2026, 3, 5, 10, 20, 59, 999999), size) == (start, end)


def test_window_bounds_do_not_depend_on_the_machines_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: its days and hours are not UTC's
    time.tzset()
    try:
        moment = datetime(2026, 3, 5, 23, 40, tzinfo=timezone(timedelta(hours=-3)))  # 02:40 UTC on the 6th
        start, end = window_bounds(moment, WindowSize.DAY)
        assert (start, end) == (at(2026, 3, 6), at(2026, 3, 7))
        assert start.utcoffset() == timedelta(0)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("moment", [at(2026, 3, 1), at(2026, 3, 1, 0, 1), at(2026, 3, 2), at(2026, 3, 31, 23, 59)])
def test_a_months_window_starts_on_its_first_day_as_an_integer(moment: datetime) -> None:
    start = window_start_of(seconds(moment), WindowSize.MONTH)
    assert type(start) is int
    assert start == seconds(at(2026, 3, 1))


def test_the_plan_reads_no_empty_piece_when_a_range_holds_one_bucket_boundary() -> None:
    # 09:30 to 10:30: no whole hour fits, but 10:00 is both the first and the last hour boundary.
    start, end = seconds(at(2026, 3, 5, 9, 30)), seconds(at(2026, 3, 5, 10, 30))
    assert plan(start, end, WindowSize.HOUR) == [Piece(MINUTE, start, end)]
    assert plan(start, end, None) == [Piece(MINUTE, start, end)]


# --- meter_rows, as the database hands rows over ---------------------------------------------


def test_rows_come_sorted_by_window_then_subject_whatever_order_they_arrive_in() -> None:
    w1, w2 = seconds(at(2026, 3, 5, 10)), seconds(at(2026, 3, 5, 11))
    grouped = [(w2, "A", (), 1), (w1, "B", (), 2), (w1, "A", (), 3), (w2, "", (), 4)]
    rows = meter_rows(grouped, start=None, end=None, window_size=WindowSize.HOUR, group_by=[])
    assert [(r.window_start, r.subject, r.value) for r in rows] == [
        (at(2026, 3, 5, 10), "A", 3),
        (at(2026, 3, 5, 10), "B", 2),
        (at(2026, 3, 5, 11), "", 4),  # the empty subject first, before upper-case ones too
        (at(2026, 3, 5, 11), "A", 1),
    ]


def test_grouped_rows_sort_by_window_subject_then_the_group_values_in_key_order() -> None:
    w1, w2 = seconds(at(2026, 3, 5, 10)), seconds(at(2026, 3, 5, 11))
    text = orjson.dumps
    # Asked for as ["z", "a"]; the order among groups follows the keys sorted: "a" first.
    grouped = [
        (w2, "A", (text("1").decode(), text("y").decode()), 1),
        (w1, "A", (text("1").decode(), text("y").decode()), 2),
        (w1, "A", (text("2").decode(), text("x").decode()), 3),
        (w1, "", (text("3").decode(), text("z").decode()), 4),
    ]
    rows = meter_rows(grouped, start=None, end=None, window_size=WindowSize.HOUR, group_by=["z", "a"])
    assert [(r.window_start.hour, r.subject, r.group_by, r.value) for r in rows] == [
        (10, "", {"z": "3", "a": "z"}, 4),
        (10, "A", {"z": "2", "a": "x"}, 3),
        (10, "A", {"z": "1", "a": "y"}, 2),
        (11, "A", {"z": "1", "a": "y"}, 1),
    ]


def test_a_rows_second_is_placed_in_the_window_that_holds_it() -> None:
    moment = at(2026, 3, 5, 10, 20, 42)  # not a window start: a row's window is the one holding it
    rows = meter_rows([(seconds(moment), None, (), 5)], start=None, end=None, window_size=WindowSize.MINUTE, group_by=[])
    assert [(r.window_start, r.window_end, r.value) for r in rows] == [(at(2026, 3, 5, 10, 20), at(2026, 3, 5, 10, 21), 5)]


def test_no_rows_and_an_integer_zero_are_answered_as_they_are() -> None:
    assert meter_rows([], start=None, end=None, window_size=WindowSize.HOUR, group_by=[]) == []
    rows = meter_rows(
        [(0, None, (), 0)], start=None, end=None, window_size=None, group_by=[], whole=(EPOCH, EPOCH + timedelta(hours=1))
    )
    assert rows == [MeterRow(EPOCH, EPOCH + timedelta(hours=1), 0, None, {})]
    assert type(rows[0].value) is int
    [row] = meter_rows([(0, None, (), Decimal("-0.00"))], start=None, end=None, window_size=WindowSize.HOUR, group_by=[])
    assert str(row.value) == "0.00"


def test_the_whole_range_without_data_or_bounds_is_the_first_minute_of_the_epoch() -> None:
    assert whole_range(None, None, None, None) == (EPOCH, EPOCH + timedelta(minutes=1))
    assert whole_range(None, None, 120, 180) == (EPOCH + timedelta(minutes=2), EPOCH + timedelta(minutes=4))


# --- the fold --------------------------------------------------------------------------------


def test_event_times_are_whole_microseconds_as_integers() -> None:
    micros = micros_of(event({}))
    assert type(micros) is int
    assert micros == seconds(at(2026, 3, 5, 10, 20, 30)) * 1_000_000 + 123456


def test_a_unique_count_token_of_exactly_the_limit_is_kept_as_text() -> None:
    value = "x" * (MAX_GROUP_VALUE_CHARS - 2)  # its JSON text, quotes included, is exactly the limit
    assert unique_token(value) == f'"{value}"'
    assert unique_token(value + "x") == digest(f'"{value}x"')


def test_the_group_key_cache_holds_each_short_text_and_no_long_one() -> None:
    compiled = compile_meter(MeterDefinition(slug="c", event_type="inference", aggregation="COUNT", group_by={"g": "$.data.g"}))
    at_limit, past = "a" * MAX_GROUP_VALUE_CHARS, "b" * (MAX_GROUP_VALUE_CHARS + 1)
    for value in ("m", at_limit, past):
        _group_key(compiled, event({"g": value}))
    assert compiled.group_keys == {
        ("m",): '{"g":"m"}',
        (at_limit,): orjson.dumps({"g": at_limit}).decode(),  # a value of exactly the limit is kept as it is
    }


def test_a_meter_without_its_value_path_counts_nothing() -> None:
    # Refused by MeterDefinition's validation; a definition stored by other code must still not
    # break the fold: it has no value, so no bucket.
    broken = MeterDefinition.model_construct(
        slug="s", event_type="inference", aggregation="SUM", value_property=None, group_by={}, description=None
    )
    assert apply({}, MeterIndex([broken]), event({"tokens": 3}), 0) == {}


# Windows of a time zone (`window_time_zone`) ------------------------------------------------------


def test_a_day_whose_midnight_clocks_skip_starts_when_they_skip() -> None:
    from zoneinfo import ZoneInfo

    santiago = ZoneInfo("America/Santiago")  # 2026-09-06: 00:00 -04 becomes 01:00 -03
    start, end = window_bounds(at(2026, 9, 6, 15), WindowSize.DAY, santiago)
    assert start == at(2026, 9, 6, 4)  # local 01:00, the day's first instant
    assert end == at(2026, 9, 7, 3)  # the next local midnight, at -03
    assert end - start == timedelta(hours=23)
    assert window_start_of(seconds(at(2026, 9, 6, 4)), WindowSize.DAY, santiago) == seconds(start)
    assert window_start_of(seconds(at(2026, 9, 6, 3, 59)), WindowSize.DAY, santiago) == seconds(at(2026, 9, 5, 4))


def test_an_hour_the_clocks_repeat_is_two_windows() -> None:
    from zoneinfo import ZoneInfo

    new_york = ZoneInfo("America/New_York")  # 2026-11-01: 01:00-02:00 happens at -04, then at -05
    first = window_bounds(at(2026, 11, 1, 5, 30), WindowSize.HOUR, new_york)
    second = window_bounds(at(2026, 11, 1, 6, 30), WindowSize.HOUR, new_york)
    assert first == (at(2026, 11, 1, 5), at(2026, 11, 1, 6))
    assert second == (at(2026, 11, 1, 6), at(2026, 11, 1, 7))


def test_a_zone_is_read_from_hours_only_where_its_offsets_are_whole_hours() -> None:
    from zoneinfo import ZoneInfo

    from projections.meter_query import hour_aligned, resolutions_for
    from projections.meters import HOUR, MINUTE

    assert hour_aligned(ZoneInfo("America/New_York")) and hour_aligned(ZoneInfo("Europe/Berlin"))
    assert not hour_aligned(ZoneInfo("Asia/Kolkata")) and not hour_aligned(ZoneInfo("Australia/Adelaide"))
    assert resolutions_for(WindowSize.DAY, ZoneInfo("Europe/Berlin")) == (HOUR, MINUTE)  # never UTC days
    assert resolutions_for(WindowSize.MONTH, ZoneInfo("Asia/Kathmandu")) == (MINUTE,)
    assert resolutions_for(WindowSize.MINUTE, ZoneInfo("Asia/Kathmandu")) == (MINUTE,)  # a minute is a minute
    assert resolutions_for(WindowSize.DAY) == resolutions_for(WindowSize.DAY, UTC)


def test_a_local_month_runs_from_its_first_local_midnight_to_the_next() -> None:
    from zoneinfo import ZoneInfo

    kolkata = ZoneInfo("Asia/Kolkata")
    assert window_bounds(at(2026, 1, 31, 18, 29), WindowSize.MONTH, kolkata) == (
        at(2025, 12, 31, 18, 30),
        at(2026, 1, 31, 18, 30),
    )
    assert window_bounds(at(2026, 1, 31, 18, 30), WindowSize.MONTH, kolkata) == (at(2026, 1, 31, 18, 30), at(2026, 2, 28, 18, 30))
    assert window_bounds(at(2026, 12, 15), WindowSize.MONTH, kolkata) == (at(2026, 11, 30, 18, 30), at(2026, 12, 31, 18, 30))


def test_every_zoned_window_holds_the_instants_it_is_given_for() -> None:
    """Across each kind of change of clocks (an hour forward or back, half an hour back on Lord
    Howe Island, midnight skipped in Santiago), the window found for an instant holds it."""
    from zoneinfo import ZoneInfo

    changes = [at(2026, 4, 4), at(2026, 10, 3), at(2026, 3, 8), at(2026, 11, 1), at(2026, 9, 5, 12)]
    for name in ("Australia/Lord_Howe", "America/New_York", "Asia/Kolkata", "America/Santiago"):
        zone = ZoneInfo(name)
        for change in changes:
            for minutes in range(0, 36 * 60, 10):
                moment = change + timedelta(minutes=minutes)
                for size in (WindowSize.HOUR, WindowSize.DAY, WindowSize.MONTH):
                    start, end = window_bounds(moment, size, zone)
                    assert start <= moment < end, (name, size, moment, start, end)
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # 02:00 +11 becomes 01:30 +10:30: that hour is 90 minutes
    assert window_bounds(at(2026, 4, 4, 15, 10), WindowSize.HOUR, lord_howe) == (at(2026, 4, 4, 14), at(2026, 4, 4, 15, 30))
