"""What a meter takes as a value or a group, and what it stores and shows (issue 11, items 7 and 8)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.meter_query import roll_up
from projections.meter_state import value_of
from projections.meters import MAX_GROUP_VALUE_CHARS, MeterIndex, _numeric, compile_meter, numeric
from schemas.meters import Aggregation, WindowSize
from tests.meter_reference import document, group_key, reference_numeric
from tests.unit.test_meter_fold import ev, fold, meter
from tests.unit.test_meter_query import bucket

MINUTE_0, MINUTE_1 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC), datetime(2024, 3, 1, 12, 1, tzinfo=UTC)
PROPS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# --- numeric strings: JSON's number grammar, in ASCII --------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1_000",  # Python's Decimal takes underscores
        "١٢٣",  # Arabic-Indic digits
        "１２３",  # full-width digits
        "٣.٥",
        "+5",
        "007",
        ".5",
        "5.",
        "1e",
        "0x10",
        "1 000",
        "\u20035",  # an em space is not JSON whitespace
        "5\xa0",
        "Infinity",
        "NaN",
        "",
        " ",
    ],
)
def test_strings_that_are_not_json_numbers_are_not_values(text):
    assert numeric(text) is None
    assert reference_numeric(text) is None


@pytest.mark.parametrize(
    "text, number",
    [
        ("42", Decimal(42)),
        ("-1.5", Decimal("-1.5")),
        ("1e3", Decimal("1e3")),
        ("1E+3", Decimal("1E+3")),
        ("0", Decimal(0)),
        ("-0.0", Decimal("-0.0")),
        ("0.000000000000000001", Decimal("1e-18")),
        (" 12 ", Decimal(12)),  # JSON whitespace around the number, as JSON allows it around a value
        ("\t\n12\r", Decimal(12)),
    ],
)
def test_json_numbers_in_strings_are_values(text, number):
    assert numeric(text) == number and numeric(text).as_tuple() == number.as_tuple()


numberish = st.text(alphabet=st.sampled_from(list("0123456789+-.eE_ \t\n\r\xa0١１x")), max_size=14)


@PROPS
@given(numberish | st.text(max_size=10) | st.from_regex(r"\A-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z"))
def test_numeric_of_a_string_is_the_json_number_it_holds(text):
    """The reference parses the string as a JSON document with Python's json module, numbers as
    Decimals: the grammar is JSON's own, not Decimal's."""
    assert _same(numeric(text), reference_numeric(text))
    assert _same(_numeric(text), reference_numeric(text))


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.as_tuple() == b.as_tuple())


# --- negative zero --------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", [Aggregation.SUM, Aggregation.MIN, Aggregation.MAX, Aggregation.LATEST, Aggregation.AVG])
def test_a_meter_query_shows_zero_without_a_sign(aggregation):
    buckets = [bucket(MINUTE_0, "-0.0", aggregation=aggregation), bucket(MINUTE_1, "-0", "-0", aggregation=aggregation)]
    assert [value_of(b.state, aggregation).is_signed() for b in buckets] == [True, True]  # stored as folded
    rows = roll_up(buckets, aggregation, start=None, end=None, window_size=WindowSize.MINUTE, group_by=(), by_subject=False)
    assert [str(r.value) for r in rows] == ["0.0", "0"]
    whole = roll_up(buckets, aggregation, start=None, end=None, window_size=None, group_by=(), by_subject=False)
    assert [r.value == 0 and not r.value.is_signed() for r in whole] == [True]


# --- long group values and unique tokens are kept as digests ---------------------------------------


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_a_long_group_value_is_stored_as_its_digest_and_still_counts_exactly():
    assert MAX_GROUP_VALUE_CHARS == 256
    long_a, long_b = "a" * 4_000_000, "a" * 3_999_999 + "b"
    at_limit = "c" * 256
    index = MeterIndex([meter("COUNT", group_by={"model": "$.data.model"})])
    view = fold(index, [ev({"model": v}) for v in (long_a, long_b, long_a, at_limit, "small")])
    counts = {orjson.loads(k.group_key)["model"]: s.count for k, s in view.items()}
    assert counts == {digest(long_a): 2, digest(long_b): 1, at_limit: 1, "small": 1}
    assert max(len(k.group_key) for k in view) < 300
    # The compiled meter's cache of group keys keeps no long text alive.
    cache = index.by_slug["count"].group_keys
    assert cache and all(len(value) <= MAX_GROUP_VALUE_CHARS for values in cache for value in values if value is not None)


def test_the_group_key_of_a_long_value_is_the_reference_one():
    compiled = compile_meter(meter("COUNT", group_by={"model": "$.data.model", "tier": "$.tier"}))
    for value in ("x" * 257, "é" * 300, "x" * 256, None, 5):
        event = ev({"model": value}, extensions={"tier": "y" * 1000})
        (key,) = fold(MeterIndex([compiled.definition]), [event])
        assert key.group_key == group_key(compiled, document(event))
        assert orjson.loads(key.group_key)["tier"] == digest("y" * 1000)


def test_long_unique_count_tokens_are_digests_and_still_count_exactly():
    index = MeterIndex([meter("UNIQUE_COUNT")])
    long_a, long_b = "u" * 1_000_000, "u" * 999_999 + "v"
    view = fold(index, [ev({"v": v}) for v in (long_a, long_b, long_a, "short", 7)])
    (state,) = view.values()
    assert value_of(state, Aggregation.UNIQUE_COUNT) == 4
    assert max(len(token) for token in state.uniques) <= 256 + len("sha256:") + 64
    assert state.uniques == {digest(orjson.dumps(long_a).decode()), digest(orjson.dumps(long_b).decode()), '"short"', "7"}
