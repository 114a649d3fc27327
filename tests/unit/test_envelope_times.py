"""The wire encoding writes every time as format_time does: UTC, microseconds always, `Z`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given
from hypothesis import strategies as st

from schemas.envelope import Envelope, decode, encode, format_time

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
moments = st.builds(
    lambda naive, micro, zone: naive.replace(microsecond=micro, tzinfo=zone),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.sampled_from([0, 1, 9, 500_000, 999_999]) | st.integers(0, 999_999),
    st.just(UTC) | offsets,
)


def envelope_at(event_time: datetime, recorded_time: datetime) -> Envelope:
    return Envelope(
        id="e", type="t", tenant_id="a", source="s", source_id="1", event_time=event_time, recorded_time=recorded_time
    )


@given(moments, moments)
def test_times_on_the_wire_are_format_times_and_read_back_equal(event_time: datetime, recorded_time: datetime) -> None:
    wire = orjson.loads(encode(envelope_at(event_time, recorded_time)))
    assert wire["time"] == format_time(event_time)
    assert wire["recordedtime"] == format_time(recorded_time)
    again = decode(encode(envelope_at(event_time, recorded_time)))
    assert (again.event_time, again.recorded_time) == (event_time, recorded_time)


def test_format_time_keeps_zero_microseconds_so_the_text_sorts_like_the_time() -> None:
    whole = datetime(2026, 11, 26, 5, 0, 0, tzinfo=UTC)
    assert format_time(whole) == "2026-11-26T05:00:00.000000Z"
    assert format_time(whole) < format_time(whole + timedelta(microseconds=1))
    assert orjson.loads(encode(envelope_at(whole, whole)))["time"] == "2026-11-26T05:00:00.000000Z"
