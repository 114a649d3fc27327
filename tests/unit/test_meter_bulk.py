"""The rebuild's bulk fold (projections.meter_bulk) against the streaming fold (projections.meters.apply).

Events go through their wire form, as on the log: schemas.envelope.decode_lean gives a Wire for
this layout without extension attributes (BulkFold.add_wire) and an Envelope otherwise (BulkFold.add).
For every aggregation, values of every kind (small and large ints, decimals of any exponent, floats,
numeric strings, bools, objects), group values of every kind (texts with COPY's special
characters, long texts, numbers, objects), equal event times (LATEST's tie goes by offset) and
paths into the CloudEvent's attributes and extensions, the minute buckets, their roll-ups and the
totals are those of apply(), roll_ups() and totals(), to the text of each number (meter_state.dump).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections import meter_bulk
from projections.meter_bulk import BulkFold, plan, state_of
from projections.meter_state import BucketState, dump
from projections.meters import MeterIndex, apply, roll_ups, totals
from schemas.envelope import Envelope, Wire, decode, decode_lean, encode
from schemas.meters import MeterDefinition

T0 = datetime(2026, 11, 1, 23, 58, tzinfo=UTC)  # a day, an hour and minutes apart within the events

METERS = [
    MeterDefinition(
        slug="tokens", event_type="inference", aggregation="SUM", value_property="$.data.v", group_by={"model": "$.data.model"}
    ),
    MeterDefinition(
        slug="calls", event_type="inference", aggregation="COUNT", group_by={"model": "$.data.model", "region": "$.data.region"}
    ),
    MeterDefinition(slug="peak", event_type="inference", aggregation="MAX", value_property="$.data.v"),
    MeterDefinition(
        slug="low", event_type="inference", aggregation="MIN", value_property="$.data.v", group_by={"who": "$.subject"}
    ),
    MeterDefinition(slug="mean", event_type="inference", aggregation="AVG", value_property="$.data.v"),
    MeterDefinition(slug="last", event_type="inference", aggregation="LATEST", value_property="$.data.v"),
    MeterDefinition(slug="users", event_type="inference", aggregation="UNIQUE_COUNT", value_property="$.data.user"),
    MeterDefinition(
        slug="by-ext", event_type="inference", aggregation="SUM", value_property="$.cost", group_by={"src": "$.source"}
    ),
    MeterDefinition(slug="ids", event_type="other", aggregation="UNIQUE_COUNT", value_property="$.id"),
]

numbers = st.one_of(
    st.integers(-1000, 1000),
    st.integers(-(10**37), 10**37),  # beyond numeric()'s int fast path, still values
    st.sampled_from([10**38, True, False, None, -0.0, 0.0, 1.5, 1e300, "1", "1.0", "1.00", "1E+2", "100", " 12 ", "007", "+5"]),
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.just({"nested": 1}),
)
texts = st.one_of(
    st.sampled_from(["small", "large", "a\tb", "back\\slash", "new\nline", 'quo"te', "", "x" * 300]),
    st.none(),
    st.integers(0, 3),
    st.just(1.0),
    st.just(["a"]),
)
events = st.lists(
    st.tuples(
        st.sampled_from(["inference", "other"]),
        st.sampled_from(["t1", "t\\2"]),
        st.integers(0, 250) | st.integers(0, 3),  # seconds after T0: equal times tie LATEST (the offset decides)
        st.sampled_from(["u1", "u\t2", None]),
        numbers,
        texts,  # model
        texts,  # region
        st.sampled_from(["a", "b", 7, None]),  # user
        st.one_of(st.none(), numbers),  # an extension attribute `cost`: the event takes the Envelope path
    ),
    max_size=30,
)


def envelope_of(drawn: tuple[Any, ...], offset: int) -> bytes:
    event_type, tenant, second, subject, value, model, region, user, cost = drawn
    # The values' JSON texts are spliced in (json, not orjson: ints beyond 64 bits are JSON numbers too).
    data = {"v": "<value>", "model": model, "region": region, "user": user}
    moment = T0 + timedelta(seconds=second)
    envelope = Envelope(
        id=f"id-{offset}", type=event_type, tenant_id=tenant, source="gw", source_id=str(offset),
        event_time=moment, recorded_time=moment, subject=subject, data=data,
        extensions={} if cost is None else {"cost": "<cost>"},
    )  # fmt: skip
    return encode(envelope).replace(b'"<value>"', json.dumps(value).encode()).replace(b'"<cost>"', json.dumps(cost).encode())


def texts_of(states: dict[Any, BucketState]) -> dict[Any, str]:
    return {tuple(key): dump(state) for key, state in states.items()}


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=events)
def test_the_bulk_fold_gives_the_buckets_roll_ups_and_totals_of_apply(drawn: list[tuple[Any, ...]]) -> None:
    index = MeterIndex(METERS)
    wire_plan = plan(index)
    values = [envelope_of(item, offset) for offset, item in enumerate(drawn)]
    streaming: dict[Any, BucketState] = {}
    fold = BulkFold()
    paths = set()
    for offset, raw in enumerate(values):
        apply(streaming, index, decode(raw), offset)
        lean = decode_lean(raw)
        paths.add(type(lean))
        if type(lean) is Wire:
            fold.add_wire(wire_plan, lean, offset)
        else:
            fold.add(index, lean, offset)  # type: ignore[arg-type]
    assert texts_of(fold.states()) == texts_of(streaming)
    theirs = roll_ups(streaming)
    ours = fold.roll_ups()
    assert set(ours) == set(theirs)
    for resolution, level in theirs.items():
        assert texts_of({k: state_of(c) for k, c in ours[resolution].items()}) == texts_of(level)
        assert texts_of({k: state_of(c) for k, c in meter_bulk.totals(ours[resolution]).items()}) == texts_of(totals(level))


def test_ties_of_equal_values_keep_the_plainer_text_and_latest_goes_by_offset() -> None:
    """The cases the property meets rarely, once each: 1E+2 and 100 and 1.00 for MIN and MAX, an
    int after a decimal in a cell, two events at the same microsecond (the later offset wins), and
    a minute of many events rolled up after one of fewer."""
    index = MeterIndex(METERS)
    fold = BulkFold()
    streaming: dict[Any, BucketState] = {}
    drawn = [("inference", "t1", 61, "u1", 3, "small", None, "a", None)]
    drawn += [("inference", "t1", 0, "u1", v, "small", None, "a", None) for v in [100, "1E+2", "100.0", 100, "99.5", 7, "7.00"]]
    drawn += [("inference", "t1", 62, "u1", v, "large", None, "b", None) for v in [1, 2]]
    drawn += [("inference", "t1", 1, "u1", v, "large", None, "c", None) for v in [5, 6, 7, 8]]
    for offset, item in enumerate(drawn):
        raw = envelope_of(item, offset)
        apply(streaming, index, decode(raw), offset)
        fold.add_wire(plan(index), decode_lean(raw), offset)  # type: ignore[arg-type]
    assert texts_of(fold.states()) == texts_of(streaming)
    for resolution, level in roll_ups(streaming).items():
        ours = fold.roll_ups()[resolution]
        assert texts_of({k: state_of(c) for k, c in ours.items()}) == texts_of(level)
        assert texts_of({k: state_of(c) for k, c in meter_bulk.totals(ours).items()}) == texts_of(totals(level))
    minute = {key.meter: state for key, state in fold.states().items() if key.window_start == int(T0.timestamp())}
    assert str(minute["peak"].maximum) == "1E+2"
    assert str(minute["low"].minimum) == "5"
    assert str(minute["last"].latest) == "8"


def test_of_signed_zeros_min_and_max_keep_the_unsigned_in_any_order() -> None:
    """0 and -0 (and 0.0 and -0.0) are equal: min and max keep the unsigned one of an exponent,
    as meter_state does, whatever order they come in (a rebuild's order is not the stream's)."""
    index = MeterIndex(METERS)
    for values in (["-0", "0"], ["0", "-0"], ["-0.0", "0.0", "-0.0"], [0, "-0", "-0.00"], ["-0", 0]):
        fold = BulkFold()
        streaming: dict[Any, BucketState] = {}
        for offset, value in enumerate(values):
            raw = envelope_of(("inference", "t1", 0, "u1", value, "small", None, "a", None), offset)
            apply(streaming, index, decode(raw), offset)
            fold.add_wire(plan(index), decode_lean(raw), offset)  # type: ignore[arg-type]
        assert texts_of(fold.states()) == texts_of(streaming), values
        minute = {key.meter: state for key, state in fold.states().items()}
        assert not minute["peak"].maximum.is_signed() and not minute["low"].minimum.is_signed(), values


def test_totals_of_events_at_one_instant_take_the_latest_offset_across_subjects() -> None:
    """Equal event times in cells of different subjects: their totals' LATEST is the later offset's."""
    index = MeterIndex(METERS)
    fold = BulkFold()
    streaming: dict[Any, BucketState] = {}
    drawn = [
        ("inference", "t1", 0, subject, value, "small", None, "a", None)
        for subject, value in [("u1", 5), ("u2", 6), ("u1", 4), (None, 9), ("u2", 8)]
    ]
    for offset, item in enumerate(drawn):
        raw = envelope_of(item, offset)
        apply(streaming, index, decode(raw), offset)
        fold.add_wire(plan(index), decode_lean(raw), offset)  # type: ignore[arg-type]
    for resolution, level in roll_ups(streaming).items():
        ours = {k: state_of(c) for k, c in meter_bulk.totals(fold.roll_ups()[resolution]).items()}
        assert texts_of(ours) == texts_of(totals(level))
        assert {str(state.latest) for key, state in ours.items() if key[1] == "last"} == {"8"}
