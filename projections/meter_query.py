"""Rolling minute buckets up into the windows and groups a query asks for."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from projections.meter_state import EMPTY, BucketState, combine, value_of
from schemas.meters import Aggregation, WindowSize


@dataclass(frozen=True, slots=True)
class StoredBucket:
    window_start: int
    subject: str
    group_key: str
    state: BucketState


@dataclass(frozen=True, slots=True)
class MeterRow:
    window_start: datetime
    window_end: datetime
    value: Decimal | int | None
    subject: str | None
    group_by: dict[str, Any]


def window_bounds(moment: datetime, size: WindowSize) -> tuple[datetime, datetime]:
    """The UTC window of `size` containing `moment`."""
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


def roll_up(
    buckets: Iterable[StoredBucket],
    aggregation: Aggregation,
    *,
    start: datetime | None,
    end: datetime | None,
    window_size: WindowSize | None,
    group_by: Sequence[str],
    by_subject: bool,
) -> list[MeterRow]:
    """Combine buckets into one row per (window, subject?, group values).

    Without a window size there is one window: [start, end), each bound
    defaulting to the first and last minute that has data. Windows at the
    edges of an explicit range are cut to it.
    """
    buckets = list(buckets)
    if not buckets:
        return []
    if window_size is None:
        whole = (
            start or datetime.fromtimestamp(min(b.window_start for b in buckets), UTC),
            end or datetime.fromtimestamp(max(b.window_start for b in buckets) + 60, UTC),
        )
    groups: dict[tuple[Any, ...], BucketState] = {}
    windows: dict[tuple[Any, ...], tuple[datetime, datetime]] = {}
    wanted = tuple(group_by)
    for bucket in buckets:
        moment = datetime.fromtimestamp(bucket.window_start, UTC)
        if window_size:
            lower, upper = window_bounds(moment, window_size)
            bounds = (max(lower, start) if start else lower, min(upper, end) if end else upper)
        else:
            bounds = whole
        values = orjson.loads(bucket.group_key) if wanted else {}
        key = (bounds[0], bucket.subject if by_subject else None, tuple(values.get(k) for k in wanted))
        groups[key] = combine(groups.get(key, EMPTY), bucket.state)
        windows[key] = bounds
    rows = [
        MeterRow(
            window_start=windows[key][0],
            window_end=windows[key][1],
            value=value_of(state, aggregation),
            subject=key[1],
            group_by=dict(zip(wanted, key[2], strict=True)),
        )
        for key, state in groups.items()
    ]
    rows.sort(key=lambda row: (row.window_start, row.subject or "", orjson.dumps(row.group_by, option=orjson.OPT_SORT_KEYS)))
    return rows
