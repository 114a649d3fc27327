"""RFC 8785 canonical JSON at the edges of what it refuses, and the reasons it gives: the audit
verifier reports a line it cannot canonicalize with that reason, and the chain dead-letters an
event with it. Each test was written for a mutant `make mutation` found alive."""

from __future__ import annotations

import pytest

from projections.jcs import MAX_EXACT, NotCanonicalizable, canonical


@pytest.mark.parametrize("char", ["\ud7ff", "\ue000", "\uffff", "\U00010000"])
def test_the_characters_either_side_of_the_surrogates_are_written_as_themselves(char: str) -> None:
    assert canonical(char) == f'"{char}"'.encode()
    assert canonical({char: char}) == f'{{"{char}":"{char}"}}'.encode()


@pytest.mark.parametrize("char", ["\ud800", "\udbff", "\udc00", "\udfff"])
def test_each_lone_surrogate_is_refused_and_named(char: str) -> None:
    with pytest.raises(NotCanonicalizable) as refused:
        canonical(["a", char])
    assert str(refused.value) == f"a lone surrogate (U+{ord(char):04X}) is not valid Unicode text"
    with pytest.raises(NotCanonicalizable) as refused:
        canonical({char: 1})
    assert str(refused.value) == "a lone surrogate is not valid Unicode text"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (MAX_EXACT + 1, "integer 9007199254740992 is outside I-JSON's exact range (±2**53 - 1)"),
        ([-MAX_EXACT - 1], "integer -9007199254740992 is outside I-JSON's exact range (±2**53 - 1)"),
        ({"a": 1, 2: "b"}, "object member names are strings, not int"),
        ({None: 1}, "object member names are strings, not NoneType"),
        ({"x": 1.5}, "float is not covered (only objects, arrays, strings, integers, booleans, null)"),
        (b"bytes", "bytes is not covered (only objects, arrays, strings, integers, booleans, null)"),
    ],
)
def test_what_is_not_covered_is_refused_with_its_reason(value: object, reason: str) -> None:
    with pytest.raises(NotCanonicalizable) as refused:
        canonical(value)
    assert str(refused.value) == reason
