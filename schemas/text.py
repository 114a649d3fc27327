"""Text the views can store, and what JSON text tells without walking its values.

PostgreSQL text holds every character but NUL (U+0000). `json_holds_nul` and `nests_deeper` answer
from a JSON text in C (bytes methods), in time linear in its length: an admission or a projector
that walked every value in Python instead could be held for seconds by one hostile body.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from pydantic import AfterValidator, Field

NUL_ESCAPE = b"\\u0000"  # how JSON writes a NUL character: no JSON text holds a raw one
_ESCAPED_BACKSLASH = b"\\\\"
_ESCAPED_QUOTE = b'\\"'
_OPENING = (b"{", b"[")
_ONE_BRACKET = bytes.maketrans(b"[]", b"{}")  # depth does not care which kind of bracket
_ALL_BUT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")


def json_holds_nul(text: bytes) -> bool:
    """Whether any string (or key) in this JSON text holds a NUL character.

    A parsed string holds U+0000 only where the text holds the escape \\u0000 (0 has no case; a raw
    NUL byte is no valid JSON), and that escape only where its backslash is not itself escaped, i.e.
    where it follows an even run of backslashes. In a run, JSON pairs the backslashes from the left:
    so does bytes.replace, and what is left of an odd run is the backslash of the next escape.
    """
    return NUL_ESCAPE in text and NUL_ESCAPE in text.replace(_ESCAPED_BACKSLASH, b"")


def nests_deeper(text: bytes, limit: int) -> bool:
    """Whether this JSON text nests arrays and objects more than `limit` levels deep (a scalar is 0
    levels, `[]` one, `{"a": [1]}` two).

    Text with at most `limit` brackets answers at once (brackets inside strings only add to the
    count). Otherwise the strings are cut out (escaped backslashes and quotes first, so that every
    other quote opens a string), the brackets are kept, and each round of replacing `{}` with
    nothing takes exactly one level off every branch: text deeper than `limit` is not empty after
    `limit` rounds. A round is a C pass over what is left, so this costs at most `limit` passes.
    """
    if text.count(_OPENING[0]) + text.count(_OPENING[1]) <= limit:
        return False
    unescaped = text.replace(_ESCAPED_BACKSLASH, b"").replace(_ESCAPED_QUOTE, b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(_ONE_BRACKET, _ALL_BUT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"{}", b"")
    return bool(brackets)


def holds_nul(value: Any) -> bool:
    """Whether any text in `value` (JSON-like data, keys too, or a msgspec struct) holds a NUL.

    The definition, walking every value in Python: on JSON text, `json_holds_nul` gives the same
    answer in C (tests hold it to this)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(holds_nul(v) for v in value)
    if isinstance(value, msgspec.Struct):
        return any(holds_nul(getattr(value, name)) for name in value.__struct_fields__)
    return False


def holds_lone_surrogate(text: str) -> bool:
    """Whether `text` holds half of a UTF-16 surrogate pair (U+D800 to U+DFFF) alone: a JSON escape
    such as \\ud800 parses into one, and no UTF-8 text (the log's, the views') can hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("may not contain NUL characters (\\u0000)")
    if holds_lone_surrogate(text):
        raise ValueError("may not contain a lone surrogate (\\ud800 to \\udfff): it is not Unicode text")
    return text


# JSON Schema's spelling of the same rule, for the OpenAPI document (ECMA-262 regex syntax).
NO_NUL_PATTERN = "^[^\\u0000]*$"

Text = Annotated[str, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": NO_NUL_PATTERN})]
