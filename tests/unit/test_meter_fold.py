"""The usage-meter fold: projections.meters.apply and the BucketState algebra under it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.meter_state import EMPTY, BucketState, combine, dump, load, observe, value_of
from projections.meters import BucketKey, MeterIndex, apply
from schemas.envelope import Envelope
from schemas.meters import Aggregation, MeterDefinition

PROPS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T0_EPOCH = int(T0.timestamp())

_serial = iter(range(10**9))


def ev(
    data: object = None,
    *,
    type: str = "inference",
    tenant: str = "t1",
    subject: str | None = "cust-1",
    at: datetime = T0,
    recorded: datetime | None = None,
    extensions: dict | None = None,
) -> Envelope:
    n = next(_serial)
    return Envelope(
        id=f"e{n}",
        type=type,
        tenant_id=tenant,
        source="src",
        source_id=f"s{n}",
        event_time=at,
        recorded_time=recorded or at,
        data=data,
        subject=subject,
        extensions=extensions or {},
    )


def meter(aggregation: str, *, slug: str | None = None, value: str | None = "$.data.v", group_by=None, event_type="inference"):
    return MeterDefinition(
        slug=slug or aggregation.lower().replace("_", "-"),
        event_type=event_type,
        aggregation=aggregation,
        value_property=None if aggregation == "COUNT" else value,
        group_by=group_by or {},
    )


def fold(index: MeterIndex, events, offsets=None) -> dict[BucketKey, BucketState]:
    view: dict[BucketKey, BucketState] = {}
    for position, event in enumerate(events):
        returned = apply(view, index, event, offsets[position] if offsets else position)
        assert returned is view
    return view


def gk(**groups) -> str:
    return orjson.dumps(groups, option=orjson.OPT_SORT_KEYS).decode()


def values(view, aggregation) -> dict[BucketKey, object]:
    return {key: value_of(state, aggregation) for key, state in view.items()}


def only_value(view, aggregation):
    assert len(view) == 1, view
    (state,) = view.values()
    return value_of(state, aggregation)


# --- each aggregation ----------------------------------------------------------------


def test_sum_per_group_and_subject():
    index = MeterIndex([meter("SUM", group_by={"model": "$.data.model"})])
    view = fold(
        index,
        [
            ev({"v": 10, "model": "a"}),
            ev({"v": 5, "model": "b"}),
            ev({"v": 2.5, "model": "a"}),
            ev({"v": "7", "model": "a"}, subject="cust-2"),
        ],
    )
    assert values(view, Aggregation.SUM) == {
        BucketKey("t1", "sum", T0_EPOCH, "cust-1", gk(model="a")): Decimal("12.5"),
        BucketKey("t1", "sum", T0_EPOCH, "cust-1", gk(model="b")): Decimal(5),
        BucketKey("t1", "sum", T0_EPOCH, "cust-2", gk(model="a")): Decimal(7),
    }


def test_count_counts_every_event_of_its_type_even_without_data():
    index = MeterIndex([meter("COUNT")])
    view = fold(index, [ev(None), ev({"v": "junk"}), ev({}), ev({"v": 1}, type="other")])
    assert only_value(view, Aggregation.COUNT) == 3


def test_max_min_avg():
    events = [ev({"v": v}) for v in (3, -2, "10.5", 4)]
    assert only_value(fold(MeterIndex([meter("MAX")]), events), Aggregation.MAX) == Decimal("10.5")
    assert only_value(fold(MeterIndex([meter("MIN")]), events), Aggregation.MIN) == Decimal(-2)
    assert only_value(fold(MeterIndex([meter("AVG")]), events), Aggregation.AVG) == Decimal("15.5") / 4


def test_avg_ignores_skipped_values_in_its_denominator():
    events = [ev({"v": 1}), ev({"v": "nope"}), ev({}), ev({"v": 3})]
    assert only_value(fold(MeterIndex([meter("AVG")]), events), Aggregation.AVG) == Decimal(2)


def test_unique_count_distinguishes_json_values_and_skips_missing_and_containers():
    events = [ev({"v": v}) for v in ("a", "b", "a", 1, "1", True, {"x": 1}, [1])] + [ev({}), ev(None)]
    view = fold(MeterIndex([meter("UNIQUE_COUNT")]), events)
    assert only_value(view, Aggregation.UNIQUE_COUNT) == 5  # "a", "b", 1, "1", true
    (state,) = view.values()
    assert state.uniques == {'"a"', '"b"', "1", '"1"', "true"}


def test_latest_prefers_later_event_time_over_later_offset():
    index = MeterIndex([meter("LATEST")])
    late_in_time = ev({"v": 1}, at=T0 + timedelta(seconds=30))
    early_in_time = ev({"v": 2}, at=T0 + timedelta(seconds=10))
    # early_in_time arrives later on the log (higher offset) but happened earlier.
    assert only_value(fold(index, [late_in_time, early_in_time], offsets=[5, 6]), Aggregation.LATEST) == Decimal(1)
    assert only_value(fold(index, [early_in_time, late_in_time], offsets=[6, 5]), Aggregation.LATEST) == Decimal(1)


def test_latest_ties_on_event_time_are_broken_by_offset_whatever_the_fold_order():
    index = MeterIndex([meter("LATEST")])
    first, second = ev({"v": "1"}), ev({"v": "2"})  # same event time
    assert only_value(fold(index, [first, second], offsets=[1, 2]), Aggregation.LATEST) == Decimal(2)
    assert only_value(fold(index, [second, first], offsets=[2, 1]), Aggregation.LATEST) == Decimal(2)
    assert only_value(fold(index, [first, second], offsets=[2, 1]), Aggregation.LATEST) == Decimal(1)
    (state,) = fold(index, [first, second], offsets=[1, 2]).values()
    assert state.latest_at == ((T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1), 2)


# --- keys: group_by, subjects, tenants, minutes --------------------------------------


def test_group_key_is_canonical_and_missing_or_nested_values_are_null():
    index = MeterIndex([meter("COUNT", group_by={"zone": "$.data.zone", "model": "$.data.m.name", "tier": "$.tier"})])
    view = fold(
        index,
        [
            ev({"zone": "eu", "m": {"name": "gpt"}}, extensions={"tier": "pro"}),
            ev({"zone": {"nested": 1}, "m": "flat"}),
            ev(None),
        ],
    )
    keys = sorted(k.group_key for k in view)
    assert keys == sorted(
        [
            '{"model":"gpt","tier":"pro","zone":"eu"}',
            '{"model":null,"tier":null,"zone":null}',
        ]
    )
    assert view[BucketKey("t1", "count", T0_EPOCH, "cust-1", '{"model":null,"tier":null,"zone":null}')].count == 2


def test_group_values_keep_their_json_type():
    index = MeterIndex([meter("COUNT", group_by={"g": "$.data.g"})])
    view = fold(index, [ev({"g": 1}), ev({"g": "1"}), ev({"g": True}), ev({"g": None})])
    assert {k.group_key for k in view} == {'{"g":1}', '{"g":"1"}', '{"g":true}', '{"g":null}'}


def test_subjects_and_tenants_get_their_own_buckets_and_no_subject_is_empty_string():
    index = MeterIndex([meter("COUNT")])
    view = fold(index, [ev(subject="a"), ev(subject="b"), ev(subject=None), ev(subject="a", tenant="t2")])
    assert {(k.tenant_id, k.subject): s.count for k, s in view.items()} == {
        ("t1", "a"): 1,
        ("t1", "b"): 1,
        ("t1", ""): 1,
        ("t2", "a"): 1,
    }


def test_events_of_other_types_leave_the_view_alone():
    index = MeterIndex([meter("SUM")])
    view = {BucketKey("t1", "sum", 0, "", "{}"): BucketState(count=1, total=Decimal(1))}
    before = dict(view)
    assert apply(view, index, ev({"v": 5}, type="unmetered"), 0) == before


def test_one_event_feeds_every_meter_of_its_type():
    index = MeterIndex([meter("SUM"), meter("COUNT"), meter("MAX", event_type="other")])
    view = fold(index, [ev({"v": 4})])
    assert {k.meter for k in view} == {"sum", "count"}


def test_minute_buckets_follow_event_time_not_recorded_time():
    index = MeterIndex([meter("COUNT")])
    late_recorded = T0 + timedelta(hours=3, seconds=17)
    view = fold(
        index,
        [
            ev(at=T0 + timedelta(seconds=59, microseconds=999_999), recorded=late_recorded),
            ev(at=T0, recorded=late_recorded),
            ev(at=T0 + timedelta(minutes=1), recorded=T0),
            ev(at=T0 - timedelta(microseconds=1), recorded=T0),
        ],
    )
    assert {k.window_start: s.count for k, s in view.items()} == {
        T0_EPOCH - 60: 1,
        T0_EPOCH: 2,
        T0_EPOCH + 60: 1,
    }


def test_event_time_offset_and_pre_epoch_times_bucket_by_utc_minute():
    index = MeterIndex([meter("COUNT")])
    plus_two = timezone(timedelta(hours=2))
    view = fold(
        index,
        [
            ev(at=datetime(2024, 3, 1, 14, 0, 30, tzinfo=plus_two)),  # 12:00:30 UTC
            ev(at=datetime(1969, 12, 31, 23, 59, 30, tzinfo=UTC)),
        ],
    )
    assert {k.window_start for k in view} == {T0_EPOCH, -60}


# --- values that are not numbers ------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"v": "abc"},
        {"v": ""},
        {"v": None},
        {},
        None,
        "not an object",
        {"v": True},
        {"v": False},
        {"v": float("nan")},
        {"v": float("inf")},
        {"v": float("-inf")},
        {"v": "NaN"},
        {"v": "sNaN"},
        {"v": "Infinity"},
        {"v": "-inf"},
        {"v": {"n": 1}},
        {"v": [1]},
    ],
)
@pytest.mark.parametrize("aggregation", ["SUM", "MAX", "MIN", "AVG", "LATEST"])
def test_non_numeric_values_are_skipped(aggregation, data):
    view = fold(MeterIndex([meter(aggregation)]), [ev(data)])
    assert view == {}


@pytest.mark.parametrize(
    "raw, expected", [("42", Decimal(42)), ("-1.5", Decimal("-1.5")), ("1e3", Decimal(1000)), (0, Decimal(0))]
)
def test_numeric_strings_and_zero_count(raw, expected):
    view = fold(MeterIndex([meter("SUM")]), [ev({"v": raw})])
    (state,) = view.values()
    assert state.count == 1 and state.total == expected


def test_bool_values_are_not_numbers_but_count_events():
    index = MeterIndex([meter("SUM"), meter("COUNT")])
    view = fold(index, [ev({"v": True}), ev({"v": 2})])
    by_meter = {k.meter: s for k, s in view.items()}
    assert by_meter["sum"].count == 1 and by_meter["sum"].total == Decimal(2)
    assert by_meter["count"].count == 2


# --- exact arithmetic -----------------------------------------------------------------


def test_float_tenths_sum_exactly():
    view = fold(MeterIndex([meter("SUM")]), [ev({"v": 0.1}) for _ in range(10)])
    total = only_value(view, Aggregation.SUM)
    assert isinstance(total, Decimal)
    assert total == Decimal(1)
    assert str(total) == "1.0"  # floats would have given 0.9999999999999999


def test_mixed_decimal_strings_sum_exactly():
    view = fold(MeterIndex([meter("SUM")]), [ev({"v": v}) for v in ("0.01", 0.02, "1e-2", 3, "-0.04")])
    assert only_value(view, Aggregation.SUM) == Decimal("3.00")


def test_64_bit_integers_stay_exact():
    big = [2**64 - 1, 2**63 - 1, 2**64 - 1, -(2**63), 12345678901234567]
    view = fold(MeterIndex([meter("SUM")]), [ev({"v": v}) for v in big])
    assert only_value(view, Aggregation.SUM) == Decimal(sum(big))
    view = fold(MeterIndex([meter("MAX")]), [ev({"v": v}) for v in big])
    assert only_value(view, Aggregation.MAX) == Decimal(2**64 - 1)


def test_huge_integers_stay_exact():
    huge = "123456789012345678901234567890"  # 30 digits, arrives as a numeric string
    view = fold(MeterIndex([meter("SUM")]), [ev({"v": huge}), ev({"v": 1})])
    assert only_value(view, Aggregation.SUM) == Decimal(int(huge) + 1)


def test_sum_with_wide_magnitudes_does_not_depend_on_order():
    index = MeterIndex([meter("SUM")])
    a, b, c = ev({"v": 1e30}), ev({"v": 1}), ev({"v": -1e30})
    one = fold(index, [a, b, c], offsets=[0, 1, 2])
    other = fold(index, [a, c, b], offsets=[0, 2, 1])
    assert only_value(one, Aggregation.SUM) == only_value(other, Aggregation.SUM) == Decimal(1)


@pytest.mark.parametrize("huge", ["9e999999", "-9e999999", 9e300, "1e38", "-1e38"])
@pytest.mark.parametrize("aggregation", ["SUM", "MAX", "MIN", "AVG", "LATEST"])
def test_huge_exponent_values_do_not_crash_the_fold(aggregation, huge):
    # Out of range (1e38 in magnitude or more): skipped by the meter, like any value that is not a number.
    view = fold(MeterIndex([meter(aggregation)]), [ev({"v": huge}), ev({"v": huge})])
    assert view == {}


def test_values_beside_huge_ones_still_count():
    view = fold(MeterIndex([meter("SUM")]), [ev({"v": "9e999999"}), ev({"v": 2}), ev({"v": "1e38"}), ev({"v": "3"})])
    assert len(view) == 1, view
    (state,) = view.values()
    assert state.count == 2 and state.total == Decimal(5)


# --- property tests -------------------------------------------------------------------

VALUE_AGGS = [Aggregation.SUM, Aggregation.MAX, Aggregation.MIN, Aggregation.AVG, Aggregation.LATEST]
ALL_AGGS = [*VALUE_AGGS, Aggregation.COUNT, Aggregation.UNIQUE_COUNT]

modest_decimals = st.decimals(min_value=-(10**9), max_value=10**9, places=4, allow_nan=False, allow_infinity=False)
unique_tokens = st.sampled_from(['"a"', '"b"', '"c"', "1", "2", "true", "null"])


@st.composite
def observed_states(draw, count: int):
    """`count` BucketStates for one aggregation, each built from observations through observe()."""
    aggregation = draw(st.sampled_from(ALL_AGGS))
    total_obs = draw(st.integers(0, 4 * count))
    offsets = draw(st.lists(st.integers(0, 10**6), min_size=total_obs, max_size=total_obs, unique=True))
    states = [EMPTY] * count
    for offset in offsets:
        which = draw(st.integers(0, count - 1))
        micros = draw(st.integers(0, 5))  # few distinct times: ties must fall to the offset
        if aggregation is Aggregation.COUNT:
            value = True
        elif aggregation is Aggregation.UNIQUE_COUNT:
            value = draw(unique_tokens)
        else:
            value = draw(modest_decimals)
        states[which] = observe(states[which], aggregation, value, (micros, offset))
    return states


@PROPS
@given(observed_states(3))
def test_combine_is_associative_and_commutative_with_empty_identity(states):
    a, b, c = states
    assert combine(combine(a, b), c) == combine(a, combine(b, c))
    assert combine(a, b) == combine(b, a)
    assert combine(a, EMPTY) == a == combine(EMPTY, a)
    # An empty state that came back from storage is no longer the EMPTY singleton.
    assert combine(a, load(dump(EMPTY))) == a == combine(load(dump(EMPTY)), a)


@PROPS
@given(observed_states(1))
def test_dump_load_round_trips(states):
    (state,) = states
    again = load(dump(state))
    assert again == state
    assert dump(again) == dump(state)
    for aggregation in ALL_AGGS:
        assert value_of(again, aggregation) == value_of(state, aggregation)


@PROPS
@given(
    st.builds(
        BucketState,
        count=st.integers(0, 10**12),
        total=modest_decimals,
        minimum=st.none() | modest_decimals,
        maximum=modest_decimals,
        latest_at=st.none() | st.tuples(st.integers(-(2**62), 2**62), st.integers(0, 2**62)),
        latest=modest_decimals,
        uniques=st.frozensets(st.text(max_size=8), max_size=5),
    )
)
def test_dump_load_round_trips_any_consistent_state(state):
    # dump() writes `hi` only with `lo`, and `l` only with `la`: keep those pairs consistent.
    if state.minimum is None:
        state = BucketState(state.count, state.total, None, None, state.latest_at, state.latest, state.uniques)
    if state.latest_at is None:
        state = BucketState(state.count, state.total, state.minimum, state.maximum, None, None, state.uniques)
    assert load(dump(state)) == state


# Events for the fold properties: several tenants, subjects, groups, minutes, and value shapes.
fold_values = st.one_of(
    st.integers(-(10**6), 10**6),
    st.sampled_from([0.1, 0.25, -2.5, 1.75, 3.0]),
    modest_decimals.map(str),
    st.sampled_from(["x", "", None, True, False, {"a": 1}, [1, 2]]),
)
FOLD_INDEX = MeterIndex(
    [meter(a.value, group_by={"model": "$.data.model"}) for a in ALL_AGGS]
    + [meter("COUNT", slug="other-count", event_type="other")]
)


@st.composite
def fold_events(draw):
    n = draw(st.integers(0, 25))
    events = []
    for _ in range(n):
        data = draw(
            st.fixed_dictionaries(
                {},
                optional={"v": fold_values, "model": st.sampled_from(["a", "b", None])},
            )
        )
        at = T0 + timedelta(seconds=draw(st.integers(0, 180)), microseconds=draw(st.sampled_from([0, 1, 999_999])))
        events.append(
            ev(
                data,
                type=draw(st.sampled_from(["inference", "inference", "other", "ignored"])),
                tenant=draw(st.sampled_from(["t1", "t2"])),
                subject=draw(st.sampled_from(["s1", "s2", None])),
                at=at,
            )
        )
    return events


def merge(stored: dict[BucketKey, BucketState], delta: dict[BucketKey, BucketState]) -> dict[BucketKey, BucketState]:
    """What the runner does per batch: combine each delta with the stored row (via its text form)."""
    out = dict(stored)
    for key, state in delta.items():
        out[key] = combine(load(dump(out[key])) if key in out else EMPTY, state)
    return out


@PROPS
@given(fold_events(), st.data())
def test_folding_in_two_batches_equals_folding_at_once(events, data):
    cut = data.draw(st.integers(0, len(events)))
    offsets = list(range(len(events)))
    whole = fold(FOLD_INDEX, events, offsets)
    first = fold(FOLD_INDEX, events[:cut], offsets[:cut])
    second = fold(FOLD_INDEX, events[cut:], offsets[cut:])
    assert merge(merge({}, first), second) == whole
    # ...and the order the two deltas are merged in does not matter either.
    assert merge(merge({}, second), first) == whole


@PROPS
@given(fold_events(), st.randoms(use_true_random=False))
def test_order_of_events_with_distinct_offsets_does_not_matter(events, rnd: random.Random):
    offsets = list(range(100, 100 + len(events)))
    paired = list(zip(events, offsets, strict=True))
    shuffled = paired[:]
    rnd.shuffle(shuffled)
    original = fold(FOLD_INDEX, [e for e, _ in paired], [o for _, o in paired])
    reordered = fold(FOLD_INDEX, [e for e, _ in shuffled], [o for _, o in shuffled])
    assert reordered == original


def test_values_outside_the_exact_range_are_skipped():
    index = MeterIndex([meter("SUM")])
    skipped = ["1e38", -(10**38), "0.0000000000000000001", "9e999999"]
    view = fold(index, [ev({"v": v}) for v in skipped])
    assert view == {}
    kept = ["9.99e37", "0.000000000000000001"]
    view = fold(index, [ev({"v": v}) for v in kept])
    assert only_value(view, Aggregation.SUM) == Decimal("99900000000000000000000000000000000000.000000000000000001")


def test_the_bound_is_exact_whatever_the_threads_decimal_context():
    """Just below 1e38 is in range; the thread's context (the fold runs in worker threads) changes nothing."""
    from decimal import Context, localcontext

    from projections.meters import numeric

    below = [10**38 - 1, -(10**38 - 1), "99999999999999999999999999999999999999.5", 10**38 - 5 * 10**9]
    for context in (None, Context(prec=3)):
        with localcontext(context):
            assert [numeric(v) for v in below] == [Decimal(v) for v in below]
            assert numeric(10**38) is None and numeric("-1e38") is None


@PROPS
@given(fold_events())
def test_roll_ups_and_totals_hold_the_minute_buckets_combined(events):
    from projections.meters import DAY, HOUR, MINUTE, roll_ups, totals

    minutes = fold(FOLD_INDEX, events)
    levels = roll_ups(minutes)
    assert levels[MINUTE] == minutes

    def combined(view, key_of):
        out = {}
        for key, state in view.items():
            out[key_of(key)] = combine(out.get(key_of(key), EMPTY), state)
        return out

    for resolution in (HOUR, DAY):
        widen = lambda k, r=resolution: k._replace(window_start=k.window_start // r * r)  # noqa: E731
        assert levels[resolution] == combined(minutes, widen)
        assert all(k.window_start % resolution == 0 for k in levels[resolution])
    for resolution, level in levels.items():
        whole = combined(minutes, lambda k, r=resolution: (k.tenant_id, k.meter, k.window_start // r * r))
        assert {tuple(k): s for k, s in totals(level).items()} == whole


@PROPS
@given(observed_states(1), modest_decimals, st.integers(0, 5), st.integers(0, 10**6))
def test_observe_is_combine_with_a_one_value_state(states, value, micros, offset):
    (state,) = states
    for aggregation in (Aggregation.SUM, Aggregation.MIN, Aggregation.MAX, Aggregation.AVG, Aggregation.LATEST):
        if state.count and state.minimum is None:
            continue  # a COUNT or UNIQUE_COUNT state: never observed with a value
        one = BucketState(count=1, total=value, minimum=value, maximum=value, latest_at=(micros, offset), latest=value)
        assert observe(state, aggregation, value, (micros, offset)) == combine(state, one)
