"""The bulk fold's cases its property test (tests/unit/test_meter_bulk.py) meets rarely, each held
to apply, roll_ups and totals whole: every state's text (meter_state.dump) and its repr (ints in a
BucketState are Decimals, as apply's), through both paths (add_wire of a Wire, add of an Envelope),
in one minute's cell, rolled up from two minutes of an hour, and totalled across two subjects.
Written for the survivors of `make mutation` in projections/meter_bulk.py (ops/mutation/equivalent.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import reduce
from itertools import permutations
from typing import Any

import pytest

from projections import meter_bulk
from projections.meter_bulk import BulkFold, plan, state_of
from projections.meter_state import EXACT, BucketState, combine, dump, observe
from projections.meters import MeterIndex, apply, roll_ups, totals
from schemas.envelope import Envelope, Wire, decode, decode_lean, encode
from schemas.meters import Aggregation, MeterDefinition

T0 = datetime(2026, 11, 1, 23, 0, tzinfo=UTC)
NUMBERS = [
    MeterDefinition(slug=slug, event_type="e", aggregation=aggregation, value_property="$.data.v")
    for slug, aggregation in [("sum", "SUM"), ("min", "MIN"), ("max", "MAX"), ("last", "LATEST"), ("mean", "AVG")]
]
Event = tuple[float, str | None, dict[str, Any], int]  # seconds after T0, subject, data, offset


def raw_of(second: float, subject: str | None, data: dict[str, Any], offset: int) -> bytes:
    # The values' JSON texts are spliced in (json: "-0" and ints beyond 64 bits stay as written).
    moment = T0 + timedelta(seconds=second)
    envelope = Envelope(
        id=f"id-{offset}", type="e", tenant_id="t1", source="gw", source_id=str(offset),
        event_time=moment, recorded_time=moment, subject=subject, data={k: f"<{k}>" for k in data},
    )  # fmt: skip
    raw = encode(envelope)
    for name, value in data.items():
        raw = raw.replace(f'"<{name}>"'.encode(), value.encode() if isinstance(value, Raw) else json.dumps(value).encode())
    return raw


class Raw(str):
    """A JSON number's text as written (e.g. -0, 1.0), spliced in verbatim."""


def whole(states: dict[Any, BucketState]) -> dict[Any, tuple[str, str]]:
    return {tuple(key): (dump(state), repr(state)) for key, state in states.items()}


def check(definitions: list[MeterDefinition], events: list[Event]) -> dict[Any, BucketState]:
    """Fold `events` in order with apply and with both bulk paths; assert all levels and totals agree."""
    index = MeterIndex(definitions)
    streaming: dict[Any, BucketState] = {}
    by_wire, by_envelope = BulkFold(), BulkFold()
    for second, subject, data, offset in events:
        raw = raw_of(second, subject, data, offset)
        apply(streaming, index, decode(raw), offset)
        lean = decode_lean(raw)
        assert type(lean) is Wire
        by_wire.add_wire(plan(index), lean, offset)
        by_envelope.add(index, decode(raw), offset)
    expected = roll_ups(streaming)
    for fold in (by_wire, by_envelope):
        assert whole(fold.states()) == whole(streaming)
        ours = fold.roll_ups()
        assert set(ours) == set(expected)
        for resolution, level in expected.items():
            assert whole({k: state_of(c) for k, c in ours[resolution].items()}) == whole(level)
            assert whole({k: state_of(c) for k, c in meter_bulk.totals(ours[resolution]).items()}) == whole(totals(level))
    return streaming


# Equal values of different texts: exponents (1.0, 1, 1E+1 and 10), zeros' signs (-0, -0.0 from
# floats and strings), ints and Decimals.
EQUALS = [
    [Raw("1.0"), Raw("1"), "1.00"],
    [Raw("10"), "1E+1", Raw("10.0")],
    [Raw("-0"), Raw("0"), "-0", "0"],
    [Raw("-0.0"), Raw("0.0"), "-0.0", Raw("0")],
]


@pytest.mark.parametrize("values", EQUALS)
def test_equal_values_keep_the_plainer_text_in_every_order_and_level(values: list[Any]) -> None:
    for order in permutations(values):
        # One minute's cell; two minutes of one hour (the hour's roll-up); two subjects (the totals).
        check(NUMBERS, [(0, "u", {"v": v}, offset) for offset, v in enumerate(order)])
        check(NUMBERS, [(60 * offset, "u", {"v": v}, offset) for offset, v in enumerate(order)])
        check(NUMBERS, [(offset, f"u{offset}", {"v": v}, offset) for offset, v in enumerate(order)])


def test_zeros_keep_the_unsigned_as_apply_does() -> None:
    """A bug the mutants showed: of -0 and 0 the bulk fold kept whichever came first."""
    states = check(NUMBERS, [(0, "u", {"v": "-0"}, 0), (0, "u", {"v": "0"}, 1)])
    low = next(state for key, state in states.items() if key.meter == "min")
    assert (str(low.minimum), str(low.maximum)) == ("0", "0")


@pytest.mark.parametrize("values", [[10**28, 1], [1, 10**28], [10**28, Raw("1.5")], [-(10**28), 10**28 - 1]])
def test_sums_of_ints_and_decimals_beyond_28_digits_are_exact(values: list[Any]) -> None:
    """10**28 is past the int fast path (a Decimal); with an int the sum has 29 digits, which the
    default decimal context (28) would round."""
    for spacing, subjects in [(0, False), (60, False), (1, True)]:
        events = [(spacing * i, f"u{i}" if subjects else "u", {"v": v}, i) for i, v in enumerate(values)]
        events += [(spacing * len(values) + 120, "u", {"v": 1}, len(values))]  # an int cell after
        states = check(NUMBERS, events)
        if spacing == 0:
            total = next(
                state.total for key, state in states.items() if key.meter == "sum" and key.window_start == int(T0.timestamp())
            )
            assert total == reduce(EXACT.add, [Decimal(str(value)) for value in values])


@pytest.mark.parametrize("number", [Raw("3"), Raw("3.5")])
def test_latest_goes_by_event_time_then_offset_whatever_order_they_come_in(number: Any) -> None:
    """LATEST is the greatest (event time, offset): an earlier event folded later, a lower offset
    folded later at the same instant, and two events at one position (the first met is kept)."""
    other = Raw("4") if number == "3" else Raw("4.5")
    check(NUMBERS, [(10, "u", {"v": number}, 0), (5, "u", {"v": other}, 1)])
    check(NUMBERS, [(10, "u", {"v": number}, 5), (10, "u", {"v": other}, 3)])
    check(NUMBERS, [(10, "u", {"v": number}, 5), (10, "u", {"v": other}, 5)])
    # Across subjects at one instant: the totals take the greatest offset, not the last cell's.
    check(NUMBERS, [(10, "b", {"v": number}, 0), (10, "a", {"v": other}, 1), (10, "b", {"v": number}, 2)])
    check(NUMBERS, [(10, "b", {"v": number}, 4), (10, "a", {"v": other}, 4)])
    check(NUMBERS, [(10, "b", {"v": number}, 4), (10, "a", {"v": other}, 3)])
    # Across minutes of an hour, later minutes folded first.
    check(NUMBERS, [(70, "u", {"v": number}, 0), (10, "u", {"v": other}, 1)])


def test_a_path_through_a_value_that_is_no_object_skips_that_meter_only() -> None:
    definitions = [
        MeterDefinition(slug="who", event_type="e", aggregation="UNIQUE_COUNT", value_property="$.data.u.id"),
        MeterDefinition(slug="cost", event_type="e", aggregation="SUM", value_property="$.data.u.n"),
        MeterDefinition(slug="calls", event_type="e", aggregation="COUNT"),
        MeterDefinition(slug="users", event_type="e", aggregation="UNIQUE_COUNT", value_property="$.data.x"),
    ]
    states = check(
        definitions,
        [(0, "u", {"u": "text", "x": "a"}, 0), (1, "u", {"u": 5, "x": "b"}, 1), (2, "u", {"u": {"id": "c", "n": 2}}, 2)],
    )
    assert {key.meter: state.count for key, state in states.items()} == {"who": 1, "cost": 1, "calls": 3, "users": 2}


def test_a_bulk_state_combines_with_a_streaming_one_as_apply_s_does() -> None:
    """The bulk states hold Decimals where apply's do (an int 7 is Decimal 7), so meter_state's own
    functions take them: combined with a state of an equal value of another text (7.0), or an average."""
    index = MeterIndex(NUMBERS)
    streaming: dict[Any, BucketState] = {}
    fold = BulkFold()
    raw = raw_of(0, "u", {"v": 7}, 0)
    apply(streaming, index, decode(raw), 0)
    fold.add_wire(plan(index), decode_lean(raw), 0)  # type: ignore[arg-type]
    other = observe(BucketState(), Aggregation.SUM, Decimal("7.0"), (0, 1))
    ours = fold.states()
    assert set(ours) == set(streaming)
    for key, state in streaming.items():
        assert repr(combine(ours[key], other)) == repr(combine(state, other))
        assert repr(combine(other, ours[key])) == repr(combine(other, state))
        assert type(ours[key].total) is type(ours[key].minimum) is type(ours[key].latest) is Decimal
