"""Facts about JSON text found without walking its values: schemas.text (issue 11, items 1 and 4)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.text import holds_nul, json_holds_nul, nests_deeper

PROPS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Text made of what the two checks must not be fooled by: backslashes, quotes, brackets, NULs and
# the letters of an escape.
tricky_text = st.text(alphabet=st.sampled_from(["\\", '"', "u", "0", "\x00", "{", "}", "[", "]", "a", "é", "\n"]), max_size=12)
tricky_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False) | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=20,
)


def depth(value: Any) -> int:
    """How many levels of arrays and objects `value` nests: a scalar 0, `[]` 1, `{"a": [1]}` 2."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def writings(value: Any) -> list[bytes]:
    """The same JSON as different writers write it: orjson (raw UTF-8), Python's json with every
    non-ASCII character escaped (NUL as \\u0000), and spaced out."""
    return [
        orjson.dumps(value),
        json.dumps(value, ensure_ascii=True).encode(),
        json.dumps(value, ensure_ascii=False, indent=1).encode(),
    ]


@PROPS
@given(tricky_json)
def test_the_nul_check_on_json_text_is_the_walk_over_its_values(value):
    for text in writings(value):
        assert json_holds_nul(text) == holds_nul(value), text


@pytest.mark.parametrize(
    "value, holds",
    [
        ({"a": "x\x00"}, True),
        ({"k\x00": 1}, True),  # in a key
        ([[[[[{"deep": ["\x00"]}]]]]], True),
        ({"a": "\\u0000"}, False),  # a backslash, then the text u0000: no NUL
        ({"a": "\\\x00"}, True),  # a backslash, then a NUL
        ({"a": "\\\\u0000"}, False),
        ({"a": "u0000"}, False),
        ({"a": "\x01"}, False),
    ],
)
def test_nul_examples(value, holds):
    for text in writings(value):
        assert json_holds_nul(text) is holds


def test_a_nul_escape_is_case_blind_only_where_json_is():
    assert json_holds_nul(b'["\\u0000"]')
    assert not json_holds_nul(b'["\\u00e9"]') and not json_holds_nul(b'["\\u00E9"]')
    assert orjson.loads(b'["\\u0000"]') == ["\x00"]  # 0 has no case: \\u0000 is the only way to write NUL


@PROPS
@given(tricky_json, st.integers(0, 8))
def test_nests_deeper_is_the_depth_of_the_value(value, limit):
    for text in writings(value):
        assert nests_deeper(text, limit) == (depth(value) > limit), text


@pytest.mark.parametrize("levels", [0, 1, 2, 31, 32, 33, 200, 253])
def test_nests_deeper_at_the_limit(levels):
    value: Any = "x"
    for level in range(levels):
        value = [value, "]]]"] if level % 2 else {"k": value, "[[": "{{"}
    assert depth(value) == levels
    text = orjson.dumps(value)
    assert nests_deeper(text, levels - 1) is (levels > 0)
    assert nests_deeper(text, levels) is False
