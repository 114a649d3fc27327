"""Rolling stored minute buckets up into query windows: projections.meter_query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.meter_query import MeterRow, Piece, StoredBucket, plan, resolutions_for, roll_up, window_bounds
from projections.meter_state import EMPTY, BucketState, observe
from projections.meters import DAY, HOUR, MINUTE
from schemas.meters import Aggregation, WindowSize

UTC = UTC


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def gk(**groups) -> str:
    return orjson.dumps(groups, option=orjson.OPT_SORT_KEYS).decode()


def state(*values, aggregation=Aggregation.SUM, start_offset=0) -> BucketState:
    s = EMPTY
    for i, v in enumerate(values):
        s = observe(
            s,
            aggregation,
            Decimal(v) if aggregation not in (Aggregation.COUNT, Aggregation.UNIQUE_COUNT) else v,
            (i, start_offset + i),
        )
    return s


def bucket(when: datetime, *values, subject="s1", group=None, aggregation=Aggregation.SUM, start_offset=0) -> StoredBucket:
    assert when.second == 0 and when.microsecond == 0
    return StoredBucket(
        window_start=int(when.timestamp()),
        subject=subject,
        group_key=gk(**(group or {})),
        state=state(*values, aggregation=aggregation, start_offset=start_offset),
    )


def run(buckets, *, size, start=None, end=None, group_by=(), by_subject=False, aggregation=Aggregation.SUM):
    return roll_up(buckets, aggregation, start=start, end=end, window_size=size, group_by=group_by, by_subject=by_subject)


def windows(rows):
    return [(r.window_start, r.window_end, r.value) for r in rows]


def test_no_buckets_no_rows():
    assert run([], size=WindowSize.HOUR) == []
    assert run([], size=None, start=at(2024, 1, 1), end=at(2024, 2, 1)) == []


def test_minute_windows():
    rows = run(
        [bucket(at(2024, 1, 1, 10, 0), 1), bucket(at(2024, 1, 1, 10, 0), 2, group={"m": "x"}), bucket(at(2024, 1, 1, 10, 1), 4)],
        size=WindowSize.MINUTE,
    )
    assert windows(rows) == [
        (at(2024, 1, 1, 10, 0), at(2024, 1, 1, 10, 1), Decimal(3)),
        (at(2024, 1, 1, 10, 1), at(2024, 1, 1, 10, 2), Decimal(4)),
    ]
    assert all(r.subject is None and r.group_by == {} for r in rows)


def test_hour_windows():
    rows = run(
        [bucket(at(2024, 1, 1, 10, 5), 1), bucket(at(2024, 1, 1, 10, 59), 2), bucket(at(2024, 1, 1, 11, 0), 4)],
        size=WindowSize.HOUR,
    )
    assert windows(rows) == [
        (at(2024, 1, 1, 10), at(2024, 1, 1, 11), Decimal(3)),
        (at(2024, 1, 1, 11), at(2024, 1, 1, 12), Decimal(4)),
    ]


def test_day_windows():
    rows = run(
        [bucket(at(2024, 1, 1, 0, 0), 1), bucket(at(2024, 1, 1, 23, 59), 2), bucket(at(2024, 1, 2, 0, 0), 4)],
        size=WindowSize.DAY,
    )
    assert windows(rows) == [
        (at(2024, 1, 1), at(2024, 1, 2), Decimal(3)),
        (at(2024, 1, 2), at(2024, 1, 3), Decimal(4)),
    ]


def test_month_windows_across_the_year_end():
    rows = run(
        [bucket(at(2023, 12, 1, 0, 0), 1), bucket(at(2023, 12, 31, 23, 59), 2), bucket(at(2024, 1, 1, 0, 0), 4)],
        size=WindowSize.MONTH,
    )
    assert windows(rows) == [
        (at(2023, 12, 1), at(2024, 1, 1), Decimal(3)),
        (at(2024, 1, 1), at(2024, 2, 1), Decimal(4)),
    ]


@pytest.mark.parametrize(
    "last_minute, month_end",
    [
        (at(2024, 2, 29, 23, 59), at(2024, 3, 1)),  # leap year
        (at(2023, 2, 28, 23, 59), at(2023, 3, 1)),
        (at(2024, 4, 30, 23, 59), at(2024, 5, 1)),
        (at(2024, 1, 31, 23, 59), at(2024, 2, 1)),
    ],
)
def test_month_window_ends_on_the_first_of_the_next_month(last_minute, month_end):
    month_start = last_minute.replace(day=1, hour=0, minute=0)
    rows = run([bucket(month_start, 1), bucket(last_minute, 2), bucket(month_end, 4)], size=WindowSize.MONTH)
    following_end = datetime(month_end.year + month_end.month // 12, month_end.month % 12 + 1, 1, tzinfo=UTC)
    assert windows(rows) == [(month_start, month_end, Decimal(3)), (month_end, following_end, Decimal(4))]
    assert (rows[0].window_end - rows[0].window_start).days == last_minute.day


@pytest.mark.parametrize(
    "moment, size, expected",
    [
        (
            datetime(2024, 3, 10, 1, 30, 15, 5, tzinfo=timezone(timedelta(hours=5))),
            WindowSize.MINUTE,
            (at(2024, 3, 9, 20, 30), at(2024, 3, 9, 20, 31)),
        ),
        (datetime(2024, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))), WindowSize.DAY, (at(2023, 12, 31), at(2024, 1, 1))),
        (datetime(2024, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))), WindowSize.MONTH, (at(2023, 12, 1), at(2024, 1, 1))),
        (at(2024, 12, 31, 23, 59, 59), WindowSize.HOUR, (at(2024, 12, 31, 23), at(2025, 1, 1))),
    ],
)
def test_window_bounds_are_utc(moment, size, expected):
    assert window_bounds(moment, size) == expected


GROUPED = [
    bucket(at(2024, 1, 1, 10, 0), 1, group={"model": "a", "region": "eu"}, subject="s1"),
    bucket(at(2024, 1, 1, 10, 1), 2, group={"model": "a", "region": "us"}, subject="s2"),
    bucket(at(2024, 1, 1, 10, 2), 4, group={"model": "b", "region": "eu"}, subject="s1"),
    bucket(at(2024, 1, 1, 10, 3), 8, group={"model": "b", "region": "us"}, subject="s1"),
]


def summary(rows):
    return {(r.subject, tuple(sorted(r.group_by.items()))): r.value for r in rows}


@pytest.mark.parametrize(
    "group_by, expected",
    [
        ((), {(None, ()): Decimal(15)}),
        (("model",), {(None, (("model", "a"),)): Decimal(3), (None, (("model", "b"),)): Decimal(12)}),
        (("region",), {(None, (("region", "eu"),)): Decimal(5), (None, (("region", "us"),)): Decimal(10)}),
        (
            ("region", "model"),
            {
                (None, (("model", "a"), ("region", "eu"))): Decimal(1),
                (None, (("model", "a"), ("region", "us"))): Decimal(2),
                (None, (("model", "b"), ("region", "eu"))): Decimal(4),
                (None, (("model", "b"), ("region", "us"))): Decimal(8),
            },
        ),
        (("absent",), {(None, (("absent", None),)): Decimal(15)}),
    ],
)
def test_group_by_subsets(group_by, expected):
    rows = run(GROUPED, size=WindowSize.HOUR, group_by=group_by)
    assert summary(rows) == expected
    assert all(list(r.group_by) == list(group_by) for r in rows)


def test_by_subject():
    rows = run(GROUPED, size=WindowSize.HOUR, by_subject=True)
    assert summary(rows) == {("s1", ()): Decimal(13), ("s2", ()): Decimal(2)}
    rows = run(GROUPED, size=WindowSize.HOUR, by_subject=True, group_by=("model",))
    assert summary(rows) == {
        ("s1", (("model", "a"),)): Decimal(1),
        ("s2", (("model", "a"),)): Decimal(2),
        ("s1", (("model", "b"),)): Decimal(12),
    }


def test_rows_are_sorted_by_window_then_subject_then_group():
    buckets = [
        bucket(at(2024, 1, 1, 11, 0), 1, subject="b", group={"m": "z"}),
        bucket(at(2024, 1, 1, 10, 0), 1, subject="b", group={"m": "a"}),
        bucket(at(2024, 1, 1, 10, 0), 1, subject="a", group={"m": "z"}),
        bucket(at(2024, 1, 1, 10, 0), 1, subject="a", group={"m": "a"}),
    ]
    rows = run(buckets, size=WindowSize.HOUR, by_subject=True, group_by=("m",))
    assert [(r.window_start.hour, r.subject, r.group_by["m"]) for r in rows] == [
        (10, "a", "a"),
        (10, "a", "z"),
        (10, "b", "a"),
        (11, "b", "z"),
    ]


def test_no_window_gives_one_row_per_group_with_bounds_from_the_data():
    buckets = [
        bucket(at(2024, 1, 3, 7, 15), 1, group={"m": "a"}),
        bucket(at(2024, 1, 1, 10, 0), 2, group={"m": "b"}),
        bucket(at(2024, 2, 9, 23, 59), 4, group={"m": "a"}),
    ]
    rows = run(buckets, size=None, group_by=("m",))
    assert [(r.window_start, r.window_end, r.group_by, r.value) for r in rows] == [
        (at(2024, 1, 1, 10, 0), at(2024, 2, 10, 0, 0), {"m": "a"}, Decimal(5)),
        (at(2024, 1, 1, 10, 0), at(2024, 2, 10, 0, 0), {"m": "b"}, Decimal(2)),
    ]


def test_no_window_uses_explicit_bounds_when_given():
    buckets = [bucket(at(2024, 1, 3, 7, 15), 1), bucket(at(2024, 1, 4, 7, 15), 2)]
    rows = run(buckets, size=None, start=at(2024, 1, 1), end=at(2024, 2, 1))
    assert windows(rows) == [(at(2024, 1, 1), at(2024, 2, 1), Decimal(3))]
    rows = run(buckets, size=None, start=at(2024, 1, 2))
    assert windows(rows) == [(at(2024, 1, 2), at(2024, 1, 4, 7, 16), Decimal(3))]
    rows = run(buckets, size=None, end=at(2024, 1, 5))
    assert windows(rows) == [(at(2024, 1, 3, 7, 15), at(2024, 1, 5), Decimal(3))]


def test_edge_windows_are_clipped_to_an_explicit_range():
    start, end = at(2024, 1, 1, 10, 30), at(2024, 1, 1, 12, 15)
    buckets = [bucket(at(2024, 1, 1, 10, 45), 1), bucket(at(2024, 1, 1, 11, 10), 2), bucket(at(2024, 1, 1, 12, 5), 4)]
    rows = run(buckets, size=WindowSize.HOUR, start=start, end=end)
    assert windows(rows) == [
        (at(2024, 1, 1, 10, 30), at(2024, 1, 1, 11), Decimal(1)),
        (at(2024, 1, 1, 11), at(2024, 1, 1, 12), Decimal(2)),
        (at(2024, 1, 1, 12), at(2024, 1, 1, 12, 15), Decimal(4)),
    ]


def test_month_windows_clipped_inside_one_month():
    rows = run(
        [bucket(at(2024, 2, 10, 0, 0), 1), bucket(at(2024, 2, 20, 0, 0), 2)],
        size=WindowSize.MONTH,
        start=at(2024, 2, 5),
        end=at(2024, 2, 25),
    )
    assert windows(rows) == [(at(2024, 2, 5), at(2024, 2, 25), Decimal(3))]


def test_avg_rolls_up_as_total_over_count_not_mean_of_means():
    buckets = [
        StoredBucket(int(at(2024, 1, 1, 10, 0).timestamp()), "s", "{}", state(1, 1, 1, 1, aggregation=Aggregation.AVG)),
        StoredBucket(int(at(2024, 1, 1, 10, 1).timestamp()), "s", "{}", state(9, aggregation=Aggregation.AVG)),
    ]
    (row,) = run(buckets, size=WindowSize.HOUR, aggregation=Aggregation.AVG)
    assert row.value == Decimal(13) / 5


def test_unique_count_rolls_up_as_a_union():
    buckets = [
        StoredBucket(
            int(at(2024, 1, 1, 10, 0).timestamp()), "s", "{}", state('"a"', '"b"', aggregation=Aggregation.UNIQUE_COUNT)
        ),
        StoredBucket(
            int(at(2024, 1, 1, 10, 1).timestamp()), "s", "{}", state('"b"', '"c"', aggregation=Aggregation.UNIQUE_COUNT)
        ),
    ]
    (row,) = run(buckets, size=WindowSize.DAY, aggregation=Aggregation.UNIQUE_COUNT)
    assert row.value == 3


def test_latest_min_max_count_roll_up():
    early = StoredBucket(
        int(at(2024, 1, 1, 10, 0).timestamp()), "s", "{}", state(5, 1, aggregation=Aggregation.LATEST, start_offset=0)
    )
    # Stored later in the list, but observed earlier on the log.
    late = StoredBucket(
        int(at(2024, 1, 1, 10, 1).timestamp()),
        "s",
        "{}",
        BucketState(count=1, total=Decimal(7), minimum=Decimal(7), maximum=Decimal(7), latest_at=(10**12, 0), latest=Decimal(7)),
    )
    for order in ([early, late], [late, early]):
        assert run(order, size=WindowSize.HOUR, aggregation=Aggregation.LATEST)[0].value == Decimal(7)
        assert run(order, size=WindowSize.HOUR, aggregation=Aggregation.MIN)[0].value == Decimal(1)
        assert run(order, size=WindowSize.HOUR, aggregation=Aggregation.MAX)[0].value == Decimal(7)
        assert run(order, size=WindowSize.HOUR, aggregation=Aggregation.COUNT)[0].value == 3


def test_rows_are_meter_rows_with_aware_utc_bounds():
    (row,) = run([bucket(at(2024, 1, 1, 10, 0), 1)], size=WindowSize.MINUTE)
    assert isinstance(row, MeterRow)
    assert row.window_start.utcoffset() == timedelta(0) and row.window_end.utcoffset() == timedelta(0)


# Which buckets a query reads: projections.meter_query.plan ------------------------------

D0 = int(at(2024, 1, 1).timestamp())


def test_plan_reads_day_buckets_for_aligned_or_open_ranges():
    month = (int(at(2024, 1, 1).timestamp()), int(at(2024, 2, 1).timestamp()))
    assert plan(*month, WindowSize.MONTH) == [Piece(DAY, *month)]
    assert plan(*month, None) == [Piece(DAY, *month)]
    assert plan(None, None, None) == [Piece(DAY, None, None)]
    assert plan(None, None, WindowSize.DAY) == [Piece(DAY, None, None)]
    assert plan(*month, WindowSize.HOUR) == [Piece(HOUR, *month)]
    assert plan(*month, WindowSize.MINUTE) == [Piece(MINUTE, *month)]


def test_plan_covers_unaligned_edges_with_finer_buckets():
    start, end = D0 + 10 * HOUR + 37 * MINUTE, D0 + 2 * DAY + 3 * HOUR + 5 * MINUTE
    assert plan(start, end, WindowSize.DAY) == [
        Piece(MINUTE, start, D0 + 11 * HOUR),
        Piece(HOUR, D0 + 11 * HOUR, D0 + DAY),
        Piece(DAY, D0 + DAY, D0 + 2 * DAY),
        Piece(HOUR, D0 + 2 * DAY, D0 + 2 * DAY + 3 * HOUR),
        Piece(MINUTE, D0 + 2 * DAY + 3 * HOUR, end),
    ]
    # Nothing whole of an hour inside: minutes only.
    assert plan(D0 + 5 * MINUTE, D0 + 50 * MINUTE, None) == [Piece(MINUTE, D0 + 5 * MINUTE, D0 + 50 * MINUTE)]
    # Open on one side.
    assert plan(D0 + 30 * MINUTE, None, None) == [
        Piece(MINUTE, D0 + 30 * MINUTE, D0 + HOUR),
        Piece(HOUR, D0 + HOUR, D0 + DAY),
        Piece(DAY, D0 + DAY, None),
    ]


bounds = st.none() | st.integers(-3 * DAY // MINUTE, 3 * DAY // MINUTE).map(lambda m: D0 + m * MINUTE)


@settings(max_examples=300, deadline=None, database=None)
@given(bounds, bounds, st.sampled_from([None, *WindowSize]))
def test_plan_covers_the_range_exactly_with_buckets_inside_one_window(start, end, size):
    if start is not None and end is not None and start >= end:
        start, end = end - MINUTE, start + MINUTE
    pieces = plan(start, end, size)
    horizon = (D0 - 5 * DAY, D0 + 5 * DAY)  # open bounds: look this far
    low, high = start if start is not None else horizon[0], end if end is not None else horizon[1]
    covered: list[int] = []
    for piece in pieces:
        assert piece.resolution in resolutions_for(size)
        for edge in (piece.start, piece.end):
            assert edge is None or edge % piece.resolution == 0
        first = piece.start if piece.start is not None else horizon[0]
        last = piece.end if piece.end is not None else horizon[1]
        covered += range(first, last, MINUTE)
        if size in (WindowSize.MINUTE, WindowSize.HOUR, WindowSize.DAY):
            assert {"MINUTE": MINUTE, "HOUR": HOUR, "DAY": DAY}[size.value] % piece.resolution == 0
    assert sorted(covered) == list(range(low, high, MINUTE))  # disjoint, and nothing missing
    assert len(pieces) <= 5
