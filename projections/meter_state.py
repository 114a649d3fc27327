"""The state kept per meter bucket, and how two states combine.

One state shape serves every aggregation: combining is associative and
commutative (LATEST breaks ties by log position), so a batch can be folded
into deltas first and the deltas combined with stored rows afterwards, and
minute buckets can be rolled up into hours, days and totals (and any larger
window at query time).
"""

from __future__ import annotations

from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import Any, NamedTuple

import orjson

from schemas.meters import Aggregation


class BucketState(NamedTuple):
    """Immutable. A named tuple rather than a frozen dataclass: the fold makes a few per event,
    and a named tuple is built four times faster."""

    count: int = 0
    total: Decimal = Decimal(0)
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    latest_at: tuple[int, int] | None = None  # (event time in µs, log offset)
    latest: Decimal | None = None
    uniques: frozenset[str] = frozenset()


EMPTY = BucketState()

# Values are bounded (projections.meters.numeric): < 1e38, >= 1e-18. 120 digits
# hold any sum of them exactly, so addition never rounds and order never matters.
EXACT = Context(prec=120, traps=[InvalidOperation, Overflow, DivisionByZero])
# An average is a quotient: it gets the precision of IEEE decimal128.
QUOTIENT = Context(prec=34)


_new = tuple.__new__  # what BucketState(...) calls, without the named tuple's own Python frame
_exact_add = EXACT.add  # bound once: a Context method looked up per call costs as much again
_ZERO, _NO_UNIQUES = EMPTY.total, EMPTY.uniques  # BucketState's defaults, the very objects
# An enum member read from its class costs a lookup per use (Python 3.11); these are the members.
_COUNT = Aggregation.COUNT
_UNIQUE_COUNT = Aggregation.UNIQUE_COUNT


def observe(state: BucketState, aggregation: Aggregation, value: Any, at: tuple[int, int]) -> BucketState:
    """Add one observation. `value` is already validated for the aggregation."""
    # The fold's hot path, called per event and meter: the fields unpacked at once, and the new
    # state built as its named tuple's __new__ does (tuple.__new__), without that Python frame.
    count, total, minimum, maximum, latest_at, latest, uniques = state
    if aggregation is _COUNT:
        return _new(BucketState, (count + 1, _ZERO, None, None, None, None, _NO_UNIQUES))
    if aggregation is _UNIQUE_COUNT:
        return _new(BucketState, (count + 1, _ZERO, None, None, None, None, uniques | {value}))
    if minimum is None:  # the first value (a state only ever holds values of its own meter)
        total = value if state is EMPTY else _exact_add(total, value)  # as combine(EMPTY, b) is b
        return _new(BucketState, (count + 1, total, value, value, at, value, uniques))
    # combine(state, <this one value>), without building the one-value state first: the smaller
    # value, or of equal ones the plainer text (`_plainer`); most values are neither, one comparison.
    newer = latest_at is None or at > latest_at
    return _new(
        BucketState,
        (
            count + 1,
            _exact_add(total, value),
            value if value <= minimum and (value < minimum or _plainer(value, minimum)) else minimum,
            value if value >= maximum and (value > maximum or _plainer(value, maximum)) else maximum,  # type: ignore[operator]
            at if newer else latest_at,
            value if newer else latest,
            uniques,
        ),
    )


def _plainer(x: Decimal, y: Decimal) -> bool:
    """Of two equal values (1.0 and 1), whether x has the larger exponent (fewer digits after the
    point), or of equal exponents, whether x is the unsigned of two zeros (0 and -0, which JSON's
    -0 and -0.0 give). Min and max keep that one of equal values whatever order they meet them in, so
    a rebuild's chunks, a stream's batches and PostgreSQL's upserts (stores.views) store the same text."""
    x_exponent, y_exponent = x.as_tuple().exponent, y.as_tuple().exponent
    return x_exponent > y_exponent or (x_exponent == y_exponent and y.is_signed() and not x.is_signed())  # type: ignore[operator]


def _lower(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if b <= a and (b < a or _plainer(b, a)) else a


def _higher(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if b >= a and (b > a or _plainer(b, a)) else a


def combine(a: BucketState, b: BucketState) -> BucketState:
    """a ⊕ b: associative and commutative, in the values and in their text (LATEST's ties go by log
    position; of equal minima or maxima, the plainer text). Built as `observe` builds states,
    without the named tuple's own frame: the roll-ups and totals of every fold call it per bucket."""
    if a is EMPTY:
        return b
    if b is EMPTY:
        return a
    a_count, a_total, a_min, a_max, a_at, a_latest, a_uniques = a
    b_count, b_total, b_min, b_max, b_at, b_latest, b_uniques = b
    if a_at is None or (b_at is not None and b_at > a_at):
        a_at, a_latest = b_at, b_latest
    return _new(
        BucketState,
        (
            a_count + b_count,
            _exact_add(a_total, b_total),
            _lower(a_min, b_min),
            _higher(a_max, b_max),
            a_at,
            a_latest,
            a_uniques | b_uniques if b_uniques else a_uniques,
        ),
    )


def value_of(state: BucketState, aggregation: Aggregation) -> Decimal | int | None:
    """The number a query shows for this state."""
    match aggregation:
        case Aggregation.COUNT:
            return state.count
        case Aggregation.SUM:
            return state.total
        case Aggregation.MIN:
            return state.minimum
        case Aggregation.MAX:
            return state.maximum
        case Aggregation.AVG:
            return average(state.total, state.count)
        case Aggregation.LATEST:
            return state.latest
        case Aggregation.UNIQUE_COUNT:
            return len(state.uniques)


def average(total: Decimal, count: int) -> Decimal | None:
    """total / count, rounded to 34 significant digits; None without values."""
    return QUOTIENT.divide(total, count) if count else None


def dump(state: BucketState) -> str:
    body: dict[str, Any] = {"n": state.count}
    if state.total:
        body["t"] = str(state.total)
    if state.minimum is not None:
        body["lo"] = str(state.minimum)
        body["hi"] = str(state.maximum)
    if state.latest_at is not None:
        body["la"] = list(state.latest_at)
        body["l"] = str(state.latest)
    if state.uniques:
        body["u"] = sorted(state.uniques)
    return orjson.dumps(body).decode()


def load(text: str | bytes) -> BucketState:
    body = orjson.loads(text)
    latest_at = body.get("la")
    return BucketState(
        count=body["n"],
        total=Decimal(body.get("t", "0")),
        minimum=Decimal(body["lo"]) if "lo" in body else None,
        maximum=Decimal(body["hi"]) if "hi" in body else None,
        latest_at=(latest_at[0], latest_at[1]) if latest_at else None,
        latest=Decimal(body["l"]) if "l" in body else None,
        uniques=frozenset(body.get("u", ())),
    )
