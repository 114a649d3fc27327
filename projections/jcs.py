"""RFC 8785 JSON Canonicalization Scheme (JCS), for the JSON the audit trail holds.

Covered: objects, arrays, strings, integers, booleans and null, which is all an audit entry or a
checkpoint holds. Not covered: numbers with a fraction or an exponent (RFC 8785 writes them as
ECMAScript's Number.prototype.toString does); `canonical` refuses them, and integers outside
I-JSON's exact range (|n| <= 2**53 - 1), rather than write a form another implementation might not.

The rules applied (RFC 8785, section 3.2):
- no whitespace between tokens;
- object members sorted by their names as arrays of UTF-16 code units (section 3.2.3), which
  differs from sorting by code points for characters beyond U+FFFF;
- strings written as ECMAScript's JSON.stringify writes them (section 3.2.2.2): `"` and `\\` escaped,
  U+0008, U+0009, U+000A, U+000C and U+000D as `\\b \\t \\n \\f \\r`, the other controls below U+0020
  as `\\u00xx` in lower-case hex, every other character as itself;
- lone surrogates are refused (I-JSON, RFC 7493: text must be valid Unicode);
- the result is UTF-8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MAX_EXACT = 2**53 - 1
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class NotCanonicalizable(ValueError):
    """A value this canonicalization does not cover (a fraction, a large integer, a lone surrogate)."""


def canonical(value: Any) -> bytes:
    """The RFC 8785 canonical form of `value` (dicts, lists, str, int, bool, None), as UTF-8."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts).encode("utf-8")


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_EXACT:
            raise NotCanonicalizable(f"integer {value} is outside I-JSON's exact range (±2**53 - 1)")
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for n, name in enumerate(sorted(value, key=_utf16_key)):  # _utf16_key refuses names that are not text
            if n:
                out.append(",")
            out.append(_string(name))
            out.append(":")
            _write(value[name], out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise NotCanonicalizable(
            f"{type(value).__name__} is not covered (only objects, arrays, strings, integers, booleans, null)"
        )


def _utf16_key(name: Any) -> bytes:
    """Big-endian UTF-16 bytes compare as the code units do."""
    if not isinstance(name, str):
        raise NotCanonicalizable(f"object member names are strings, not {type(name).__name__}")
    try:
        return name.encode("utf-16-be", errors="strict")
    except UnicodeEncodeError as lone:
        raise NotCanonicalizable("a lone surrogate is not valid Unicode text") from lone


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT:
            out.append(_SHORT[char])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise NotCanonicalizable(f"a lone surrogate (U+{code:04X}) is not valid Unicode text")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
