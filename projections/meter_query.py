"""Answering a meter query from stored buckets: which buckets to read, and how to roll them up.

Buckets are kept at three resolutions (minute, hour, day; see meters.py). A
query reads the coarsest resolution whose buckets each fall inside a single
window of the query, and finer buckets only for the edges of a from/to that
is not aligned to it (`plan`). The store then combines the buckets per
window and group, either in SQL (PostgreSQL) or here in Python (`roll_up`),
and `meter_rows` turns the combined values into the rows the API answers.

Windows are UTC unless a query names a time zone (`zone`): then its hours, days and months start at
that zone's local boundaries (a day of 23 or 25 hours across a change of clocks; a month from local
midnight on its first). The stored buckets are UTC, so such a query reads hours where the zone's
offsets are whole hours and minutes where they are not (+05:30), never days, and every database
combines them here (`roll_up`), so the two agree by construction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from projections.meter_state import EMPTY, BucketState, combine, value_of
from projections.meters import DAY, HOUR, MINUTE
from schemas.meters import Aggregation, WindowSize

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECONDS = {WindowSize.MINUTE: MINUTE, WindowSize.HOUR: HOUR, WindowSize.DAY: DAY}


@dataclass(frozen=True, slots=True)
class StoredBucket:
    window_start: int
    subject: str
    group_key: str
    state: BucketState


class MeterRow(NamedTuple):
    """One answer row. A named tuple: a query can have thousands, and they are built fast."""

    window_start: datetime
    window_end: datetime
    value: Decimal | int | None
    subject: str | None
    group_by: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Piece:
    """Read buckets of `resolution` seconds whose window starts in [start, end) (None: unbounded)."""

    resolution: int
    start: int | None
    end: int | None


def zoned(window_size: WindowSize | None, zone: tzinfo) -> bool:
    """Whether this query's windows depend on its time zone: hours, days and months outside UTC."""
    return zone is not UTC and window_size not in (None, WindowSize.MINUTE)


def window_bounds(moment: datetime, size: WindowSize, zone: tzinfo = UTC) -> tuple[datetime, datetime]:
    """The window of `size` containing `moment`: UTC's, or `zone`'s local one (as UTC instants)."""
    if zoned(size, zone):
        start = window_start_of(int(moment.timestamp()), size, zone)
        return EPOCH + timedelta(seconds=start), EPOCH + timedelta(seconds=_next_start(start, size, zone))
    moment = moment.astimezone(UTC)
    match size:
        case WindowSize.MINUTE:
            start = moment.replace(second=0, microsecond=0)
            return start, start + timedelta(minutes=1)
        case WindowSize.HOUR:
            start = moment.replace(minute=0, second=0, microsecond=0)
            return start, start + timedelta(hours=1)
        case WindowSize.DAY:
            start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            return start, start + timedelta(days=1)
        case WindowSize.MONTH:
            start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
            return start, end


def _local_start(local: datetime, size: WindowSize) -> datetime:
    """The local time a window of `size` holding `local` starts at. A day or month starts at the
    first of its midnight (fold 0; where clocks skip midnight, that names the instant they skip
    from); an hour that clocks repeat is two windows (its fold is kept)."""
    match size:
        case WindowSize.HOUR:
            return local.replace(minute=0, second=0, microsecond=0)
        case WindowSize.DAY:
            return local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
        case _:
            return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0, fold=0)


def _next_start(start: int, size: WindowSize, zone: tzinfo) -> int:
    """Where the zoned window starting at `start` (epoch seconds) ends: the next one's start."""
    local = datetime.fromtimestamp(start, zone)
    match size:
        case WindowSize.HOUR:  # the next local hour's start: an hour later, or 90 minutes where
            # clocks go back half an hour (Lord Howe Island) and this local hour starts once more
            probe = start + HOUR
            while (following := window_start_of(probe, size, zone)) <= start:
                probe += HOUR // 2
            return following
        case WindowSize.DAY:
            following = (local.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
        case _:
            year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
            following = local.replace(year=year, month=month)
    return int(_local_start(following, size).timestamp())


@functools.lru_cache(maxsize=256)
def hour_aligned(zone: tzinfo) -> bool:
    """Whether `zone`'s offset from UTC has been a whole number of hours at every month's start from
    1970 to 2100 (usage exists only in between): its local hours, days and months then start on
    UTC hours, so its windows can be read from hour buckets. +05:30 and +05:45 cannot."""
    moments = (datetime(year, month, 1, tzinfo=UTC) for year in range(1970, 2101) for month in range(1, 13))
    return all(
        (offset := moment.astimezone(zone).utcoffset()) is not None and offset % timedelta(hours=1) == timedelta(0)
        for moment in moments
    )


def resolutions_for(window_size: WindowSize | None, zone: tzinfo = UTC) -> tuple[int, ...]:
    """Bucket sizes that never straddle a window of this size, coarsest first."""
    if zoned(window_size, zone):
        return (HOUR, MINUTE) if hour_aligned(zone) else (MINUTE,)
    match window_size:
        case WindowSize.MINUTE:
            return (MINUTE,)
        case WindowSize.HOUR:
            return (HOUR, MINUTE)
        case _:  # days, months (unions of UTC days) and one window over the whole range
            return (DAY, HOUR, MINUTE)


def plan(start: int | None, end: int | None, window_size: WindowSize | None, zone: tzinfo = UTC) -> list[Piece]:
    """Disjoint pieces that cover [start, end) (epoch seconds, whole minutes) exactly.

    The middle is read at the coarsest resolution the window size (and zone) allows; an
    edge that is not aligned to it is covered by finer buckets.
    """
    return _cover(start, end, resolutions_for(window_size, zone))


def _cover(start: int | None, end: int | None, levels: Sequence[int]) -> list[Piece]:
    size, finer = levels[0], levels[1:]
    if not finer:
        return [Piece(size, start, end)]
    inner_start = None if start is None else -(-start // size) * size
    inner_end = None if end is None else end // size * size
    if inner_start is not None and inner_end is not None and inner_start >= inner_end:
        return _cover(start, end, finer)  # no whole bucket of this size fits
    pieces = [Piece(size, inner_start, inner_end)]
    if start is not None and inner_start is not None and start < inner_start:
        pieces = _cover(start, inner_start, finer) + pieces
    if end is not None and inner_end is not None and inner_end < end:
        pieces = pieces + _cover(inner_end, end, finer)
    return pieces


def window_start_of(epoch_seconds: int, window_size: WindowSize, zone: tzinfo = UTC) -> int:
    """The start (epoch seconds) of the window of `window_size` holding this second: UTC's, or
    `zone`'s local one."""
    if zoned(window_size, zone):
        return int(_local_start(datetime.fromtimestamp(epoch_seconds, zone), window_size).timestamp())
    if window_size is WindowSize.MONTH:
        moment = EPOCH + timedelta(seconds=epoch_seconds)
        return (datetime(moment.year, moment.month, 1, tzinfo=UTC) - EPOCH) // timedelta(seconds=1)
    size = SECONDS[window_size]
    return epoch_seconds // size * size


# One grouped value, before it becomes a row: (window start in epoch seconds, subject or None,
# the JSON texts of the requested group values, the value).
Grouped = tuple[int, str | None, tuple[str, ...], Decimal | int | None]


def meter_rows(
    grouped: Iterable[Grouped],
    *,
    start: datetime | None,
    end: datetime | None,
    window_size: WindowSize | None,
    group_by: Sequence[str],
    whole: tuple[datetime, datetime] | None = None,
    zone: tzinfo = UTC,
) -> list[MeterRow]:
    """Rows sorted by window, subject, then group values; edge windows cut to [start, end).

    Without a window size, every row spans `whole`; otherwise a row's window
    is the one holding its epoch second (in `zone`, whose windows the rows
    must already name by their starts). A query may answer thousands of rows,
    so this loop avoids every avoidable object.
    """
    wanted = tuple(group_by)
    items: list[Any] = list(grouped)
    if wanted:
        items = [(w, s, {k: orjson.loads(t) for k, t in zip(wanted, texts, strict=True)}, v) for w, s, texts, v in items]
        items.sort(key=lambda i: (i[0], i[1] or "", orjson.dumps(i[2], option=orjson.OPT_SORT_KEYS)))
    elif items and items[0][1] is not None:  # rows are either all per subject or none
        items.sort(key=lambda i: (i[0], i[1] or ""))
    else:
        items.sort(key=lambda i: i[0])
    new = tuple.__new__  # a MeterRow without the named tuple's Python-level __new__
    if window_size is None:
        assert whole is not None
        lower, upper = whole
        return [
            new(MeterRow, (lower, upper, v if v or v is None else _unsigned(v), s, g if wanted else {})) for _, s, g, v in items
        ]
    first = None if start is None else int(start.timestamp())
    last = None if end is None else int(end.timestamp())
    local = zoned(window_size, zone)
    seconds = None if local else SECONDS.get(window_size)
    step = timedelta(seconds=seconds or 0)
    rows = []
    previous = following = None  # the last window seen, and where it ends (epoch seconds)
    lower = upper = cut_lower = cut_upper = EPOCH
    for w, s, g, v in items:
        if seconds is not None:
            w -= w % seconds
        if w != previous:
            if seconds is None:  # a month, or a window of a time zone's
                lower, upper = window_bounds(EPOCH + timedelta(seconds=w), window_size, zone)
                w, high = (lower - EPOCH) // _SECOND, (upper - EPOCH) // _SECOND
            else:
                lower = upper if w == following else EPOCH + timedelta(seconds=w)
                upper, high = lower + step, w + seconds
            cut_lower = start if start is not None and first is not None and first > w else lower
            cut_upper = end if end is not None and last is not None and last < high else upper
            previous, following = w, high
        if not v and v is not None:
            v = _unsigned(v)
        rows.append(new(MeterRow, (cut_lower, cut_upper, v, s, g if wanted else {})))
    return rows


_SECOND = timedelta(seconds=1)


def _unsigned(zero: Decimal | int) -> Decimal | int:
    """Zero without a sign: a sum of -0.0 values, say, is stored as Decimal("-0.0") (Decimal keeps the
    sign of a zero), but an answer of -0.0 only confuses. The digits after the point are kept."""
    return zero.copy_abs() if type(zero) is Decimal else zero


def whole_range(start: datetime | None, end: datetime | None, first: int | None, last: int | None) -> tuple[datetime, datetime]:
    """The one window of a query without a window size: [start, end), each bound defaulting to
    the first minute with data and the end of the last one (`first`, `last`: their epoch seconds)."""
    return (
        start or EPOCH + timedelta(seconds=first or 0),
        end or EPOCH + timedelta(seconds=(last or 0) + MINUTE),
    )


def group_texts(group_key: str, group_by: Sequence[str]) -> tuple[str, ...]:
    """The canonical JSON text of each requested group value (null when absent)."""
    values = orjson.loads(group_key)
    return tuple(orjson.dumps(values.get(k)).decode() for k in group_by)


def roll_up(
    buckets: Iterable[StoredBucket],
    aggregation: Aggregation,
    *,
    start: datetime | None,
    end: datetime | None,
    window_size: WindowSize | None,
    group_by: Sequence[str],
    by_subject: bool,
    span: tuple[int, int] | None = None,
    zone: tzinfo = UTC,
) -> list[MeterRow]:
    """Combine buckets into one row per (window, subject?, group values), in Python.

    Each bucket must lie inside one window (see `plan`). Without a window
    size there is one window: [start, end), each bound defaulting to the
    first and last minute that has data, given as `span` (epoch seconds of
    both minutes) or, when absent, taken from the buckets (minute buckets).
    Windows at the edges of an explicit range are cut to it.
    """
    buckets = list(buckets)
    if not buckets:
        return []
    whole = None
    if window_size is None:
        first, last = span or (min(b.window_start for b in buckets), max(b.window_start for b in buckets))
        whole = whole_range(start, end, first, last)
    wanted = tuple(group_by)
    texts: dict[str, tuple[str, ...]] = {}
    groups: dict[tuple[int, str | None, tuple[str, ...]], BucketState] = {}
    local = zoned(window_size, zone)
    starts: dict[int, int] = {}  # a bucket's start: its window's, in a time zone (worth remembering there)
    for bucket in buckets:
        if window_size is None:
            window = 0
        elif not local:
            window = window_start_of(bucket.window_start, window_size)
        elif (known := starts.get(bucket.window_start)) is not None:
            window = known
        else:
            window = starts[bucket.window_start] = window_start_of(bucket.window_start, window_size, zone)
        values = texts.get(bucket.group_key)
        if values is None:
            values = texts[bucket.group_key] = group_texts(bucket.group_key, wanted) if wanted else ()
        key = (window, bucket.subject if by_subject else None, values)
        groups[key] = combine(groups.get(key, EMPTY), bucket.state)
    return meter_rows(
        ((window, subject, values, value_of(state, aggregation)) for (window, subject, values), state in groups.items()),
        start=start,
        end=end,
        window_size=window_size,
        group_by=wanted,
        whole=whole,
        zone=zone,
    )
