"""The fold's fast paths against the definitions they stand for.

apply() reads each meter's paths from the event itself (not from document(event)), caches
group keys, takes ints without Decimal's general checks and builds states and keys without
their named tuples' Python constructors. Each must give exactly what the general path gives:
equal values with the same decimal representation, the same JSON text.
"""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.meter_state import EMPTY, EXACT, BucketState, combine, dump, observe
from projections.meters import (
    _SMALL_INT,
    BucketKey,
    MeterIndex,
    _group_key,
    _numeric,
    apply,
    compile_meter,
    micros_of,
    numeric,
    read,
)
from schemas.meters import Aggregation, path_parts
from tests.meter_reference import contribution, document, group_key, lookup
from tests.unit.test_meter_fold import ALL_AGGS, PROPS, T0, ev, meter

# --- numeric: the int fast path -----------------------------------------------------------

# Around the fast path's own bound, and around 1e38 (where the general path once refused ints just
# below the bound: abs() rounded them up to it in the default 28-digit context).
EDGES = [_SMALL_INT, 10**38, 10**38 - 5 * 10**9, 10**38 - 15 * 10**9]
BOUNDARY_INTS = [0, 1, 812, 2**63, *(sign * (edge + d) for edge in EDGES for d in (-1, 0, 1) for sign in (1, -1))]


def same_number(a: Decimal | None, b: Decimal | None) -> bool:
    """Equal and written alike (Decimal("1") == Decimal("1.0"), but the sums' texts differ)."""
    if a is None or b is None:
        return a is b
    return type(a) is type(b) is Decimal and a.as_tuple() == b.as_tuple()


@pytest.mark.parametrize("value", BOUNDARY_INTS)
def test_numeric_of_an_int_is_the_general_answer_at_the_bounds(value):
    assert same_number(numeric(value), _numeric(value))
    assert same_number(numeric(value), _numeric(str(value)))  # and the text of the same number


@PROPS
@given(st.integers(-(2**140), 2**140) | st.integers(-(10**6), 10**6) | st.integers(10**28 - 10**6, 10**28 + 10**6))
def test_numeric_of_any_int_is_the_general_answer(value):
    assert same_number(numeric(value), _numeric(value))


@PROPS
@given(
    st.booleans()
    | st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.decimals(allow_nan=False).map(str)
    | st.lists(st.integers(), max_size=2)
)
def test_numeric_of_other_values_is_the_general_answer(value):
    assert same_number(numeric(value), _numeric(value))


def test_bools_are_not_numbers():
    assert numeric(True) is None and numeric(False) is None


# --- read and the group-key cache ---------------------------------------------------------

# Values that compare equal while their JSON differs (1, 1.0, True; 0.0, -0.0), text, containers.
scalars = st.one_of(
    st.sampled_from([0, 1, -1, 1.0, 0.0, -0.0, 1.5, True, False, None, "", "1", "a", "true", "null", 2**64, math.nan, math.inf]),
    st.integers(-3, 3),
    st.floats(-3, 3),
    st.text(max_size=3),
)
group_values = st.one_of(
    scalars, st.dictionaries(st.sampled_from(["name", "x"]), scalars, max_size=2), st.lists(scalars, max_size=2)
)

PATHS = ["$.data.model", "$.data.m.name", "$.data", "$.tier", "$.subject", "$.id", "$.source", "$.type", "$.data.x.y"]


@st.composite
def events(draw):
    data = draw(
        st.none()
        | group_values
        | st.fixed_dictionaries({}, optional={"model": group_values, "m": group_values, "x": group_values, "v": scalars})
    )
    # Extensions may name document()'s own keys; theirs then win.
    extensions = draw(st.dictionaries(st.sampled_from(["tier", "data", "subject", "id", "type"]), group_values, max_size=2))
    return ev(data, subject=draw(st.sampled_from(["s1", None, ""])), extensions=extensions)


def canonical_or_error(compute):
    try:
        return compute()
    except TypeError as failure:  # orjson's, e.g. an int beyond 64 bits: both paths must fail alike
        return type(failure)


def compiled_reader(path: str):
    (reader,) = compile_meter(meter("COUNT", group_by={"g": path})).group_readers
    return reader


READERS = {path: compiled_reader(path) for path in PATHS}


@PROPS
@given(st.lists(events(), min_size=1, max_size=30), st.lists(st.sampled_from(PATHS), max_size=3, unique=True))
def test_read_and_cached_group_keys_are_the_definitions(batch, paths):
    compiled = compile_meter(meter("COUNT", group_by={f"g{n}": path for n, path in enumerate(paths)}))
    for event in batch * 2:  # twice: the second time from the cache
        doc = document(event)
        for path in PATHS:
            assert read(event, READERS[path]) is lookup(doc, path_parts(path))  # the very object
        if compiled.group_readers:
            fast = canonical_or_error(lambda e=event: _group_key(compiled, e))
            assert fast == canonical_or_error(lambda d=doc: group_key(compiled, d))


def test_equal_values_with_different_json_do_not_share_a_cached_group_key():
    compiled = compile_meter(meter("COUNT", group_by={"g": "$.data.g"}))
    for value in [1, 1.0, True, 0.0, -0.0, False, 0, "1", None, 1, 1.0, True, "1", -0.0, 0.0]:
        expected = orjson.dumps({"g": value}).decode()
        assert _group_key(compiled, ev({"g": value})) == expected, value


def test_the_group_key_cache_is_bounded(monkeypatch):
    monkeypatch.setattr("projections.meters.GROUP_KEY_CACHE_SIZE", 10)
    compiled = compile_meter(meter("COUNT", group_by={"g": "$.data.g"}))
    for n in range(25):
        assert _group_key(compiled, ev({"g": f"v{n}"})) == orjson.dumps({"g": f"v{n}"}).decode()
        assert len(compiled.group_keys) <= 10


# --- apply against the fold as defined ------------------------------------------------------


def reference_apply(view: dict[BucketKey, BucketState], meters: MeterIndex, event, offset: int) -> None:
    """apply() as written before its fast paths: document(), contribution(), group_key(), BucketKey()."""
    candidates = meters.by_type.get(event.type)
    if not candidates:
        return
    doc = document(event)
    micros = micros_of(event)
    at = (micros, offset)
    for compiled in candidates:
        value = contribution(compiled, event, doc)
        if value is None:
            continue
        key = BucketKey(event.tenant_id, compiled.slug, micros // 60_000_000 * 60, event.subject or "", group_key(compiled, doc))
        view[key] = reference_observe(view.get(key, EMPTY), compiled.aggregation, value, at)


def reference_observe(state: BucketState, aggregation: Aggregation, value, at) -> BucketState:
    """observe() as the combination of the state with a state of this one value."""
    if aggregation is Aggregation.COUNT:
        return combine(state, BucketState(count=1))
    if aggregation is Aggregation.UNIQUE_COUNT:
        return combine(state, BucketState(count=1, uniques=frozenset({value})))
    return combine(state, BucketState(1, value, value, value, at, value))


INDEX = MeterIndex(
    [
        meter(a.value, slug=f"{a.value.lower().replace('_', '-')}-g", group_by={"model": "$.data.model", "t": "$.tier"})
        for a in ALL_AGGS
    ]
    + [meter(a.value, slug=a.value.lower().replace("_", "-")) for a in ALL_AGGS]
    + [meter("SUM", slug="from-extension", value="$.amount", group_by={"s": "$.subject"})]
)
values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),  # beyond 64 bits orjson refuses an int (UNIQUE_COUNT, group keys) on either path
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.1, -0.0, 2.5, "1.50", "1e-18", "1e-19", " 7 ", "9.99e37", "1e38", "x", True, False, None, {"a": 1}, [1]]),
)


@st.composite
def fold_events(draw):
    data = draw(
        st.fixed_dictionaries({}, optional={"v": values, "model": st.sampled_from(["a", "b", 1, 1.0, True, None, {"n": 1}])})
    )
    extensions = draw(
        st.dictionaries(st.sampled_from(["tier", "amount", "subject"]), values | st.sampled_from(["pro", "free"]), max_size=2)
    )
    at = T0 + timedelta(seconds=draw(st.integers(0, 150)), microseconds=draw(st.sampled_from([0, 1, 999_999])))
    return ev(data, subject=draw(st.sampled_from(["s1", "s2", None])), at=at, extensions=extensions)


@PROPS
@given(st.lists(fold_events(), max_size=40), st.randoms(use_true_random=False))
def test_apply_is_the_fold_as_defined(batch, rnd):
    offsets = rnd.sample(range(10_000), len(batch))
    fast: dict[BucketKey, BucketState] = {}
    slow: dict[BucketKey, BucketState] = {}
    for event, offset in zip(batch, offsets, strict=True):
        assert apply(fast, INDEX, event, offset) is fast
        reference_apply(slow, INDEX, event, offset)
    assert fast == slow
    assert {key: dump(state) for key, state in fast.items()} == {key: dump(state) for key, state in slow.items()}
    assert all(type(key) is BucketKey and type(state) is BucketState for key, state in fast.items())


# Equal numbers written differently: which one min, max and latest keep shows in the stored text.
TIED = [Decimal(text) for text in ("1", "1.0", "1.00", "0", "-0", "0.0", "2.5", "2.50", "-1.0", "-1")]


@PROPS
@given(
    st.sampled_from(ALL_AGGS),
    st.lists(
        st.tuples(st.integers(-(10**6), 10**6).map(lambda n: Decimal(n) / 4) | st.sampled_from(TIED), st.integers(0, 3)),
        max_size=12,
    ),
)
def test_observe_is_combining_with_a_one_value_state(aggregation, observations):
    state = reference = EMPTY
    for n, (number, micros) in enumerate(observations):
        value = True if aggregation is Aggregation.COUNT else str(number) if aggregation is Aggregation.UNIQUE_COUNT else number
        state = observe(state, aggregation, value, (micros, n))
        reference = reference_observe(reference, aggregation, value, (micros, n))
        assert state == reference and dump(state) == dump(reference)
        assert type(state) is BucketState


@pytest.mark.parametrize("aggregation", [Aggregation.MIN, Aggregation.MAX])
@pytest.mark.parametrize(
    ("order", "plainest"),
    [
        (["1.0", "1", "1.00"], "1"),
        (["1.00", "1.0", "1"], "1"),
        (["1", "1.00", "1.0"], "1"),
        (["-0", "0"], "0"),  # JSON's -0: of zeros of one exponent, the unsigned
        (["0", "-0"], "0"),
        (["-0.0", "0.0", "-0"], "-0"),  # the larger exponent first
        (["0.0", "-0", "-0.0"], "-0"),
    ],
)
def test_observe_keeps_the_plainest_of_equal_extremes_in_any_order(aggregation, order, plainest):
    state = EMPTY
    for n, text in enumerate(order):
        state = observe(state, aggregation, Decimal(text), (0, n))
    assert str(state.minimum) == str(state.maximum) == plainest


@given(st.permutations(["2.50", "2.5", "2.500", "3", "3.0", "-1.0", "-1"]), st.integers(1, 6))
def test_equal_extremes_combine_to_the_same_text_in_any_order_and_grouping(texts, split):
    """Min and max of equal values keep one text whatever order or grouping the fold met them in:
    a rebuild's chunks and a stream's batches store the same bytes."""
    parts = [texts[:split], texts[split:]]
    states = []
    for part in parts:
        state = EMPTY
        for n, text in enumerate(part):
            state = observe(state, Aggregation.MIN, Decimal(text), (0, n))
        states.append(state)
    for state in (combine(states[0], states[1]), combine(states[1], states[0])):
        assert (str(state.minimum), str(state.maximum)) == ("-1", "3")


@given(st.permutations(["0", "-0", "0.0", "-0.0"]), st.integers(1, 3))
def test_zeros_combine_to_the_unsigned_plainest_in_any_order_and_grouping(texts, split):
    states = []
    for part in (texts[:split], texts[split:]):
        state = EMPTY
        for n, text in enumerate(part):
            state = observe(state, Aggregation.MAX, Decimal(text), (0, n))
        states.append(state)
    for state in (combine(states[0], states[1]), combine(states[1], states[0])):
        assert (str(state.minimum), str(state.maximum)) == ("0", "0")


# --- combine, against its definition as written before its fast path ---------------------------


def reference_combine(a: BucketState, b: BucketState) -> BucketState:
    def pick(choose, x, y):  # type: ignore[no-untyped-def]
        return y if x is None else x if y is None else choose(x, y)

    if a is EMPTY:
        return b
    if b is EMPTY:
        return a
    if a.latest_at is None or (b.latest_at is not None and b.latest_at > a.latest_at):
        latest_at, latest = b.latest_at, b.latest
    else:
        latest_at, latest = a.latest_at, a.latest
    return BucketState(
        count=a.count + b.count,
        total=EXACT.add(a.total, b.total),
        # The smallest (largest) value; of equal ones the plainest text, the largest exponent, and
        # of zeros of one exponent the unsigned.
        minimum=pick(lambda x, y: min(x, y, key=lambda d: (d, -d.as_tuple().exponent, d.is_signed())), a.minimum, b.minimum),
        maximum=pick(lambda x, y: max(x, y, key=lambda d: (d, d.as_tuple().exponent, not d.is_signed())), a.maximum, b.maximum),
        latest_at=latest_at,
        latest=latest,
        uniques=a.uniques | b.uniques if b.uniques else a.uniques,
    )


numbers = st.sampled_from(TIED) | st.integers(-(10**6), 10**6).map(lambda n: Decimal(n) / 8)
states = st.just(EMPTY) | st.builds(
    lambda count, total, low, high, at, latest, uniques: BucketState(count, total, low, high, at, latest, uniques),
    st.integers(0, 5),
    numbers,
    st.none() | numbers,
    st.none() | numbers,
    st.none() | st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.none() | numbers,
    st.frozensets(st.sampled_from(['"a"', '"b"', "1"]), max_size=2),
)


@PROPS
@given(states, states)
def test_combine_is_its_definition(a, b):
    fast, slow = combine(a, b), reference_combine(a, b)
    assert fast == slow and type(fast) is BucketState
    assert dump(fast) == dump(slow)  # which of equal extremes was kept shows in the text
