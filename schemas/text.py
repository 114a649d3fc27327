"""Text the views can store: PostgreSQL text holds every character but NUL (U+0000)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from pydantic import AfterValidator

NUL_ESCAPE = b"\\u0000"  # how JSON writes a NUL character: no JSON text holds a raw one


def holds_nul(value: Any) -> bool:
    """Whether any text in `value` (JSON-like data, keys too, or a msgspec struct) holds a NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(holds_nul(v) for v in value)
    if isinstance(value, msgspec.Struct):
        return any(holds_nul(getattr(value, name)) for name in value.__struct_fields__)
    return False


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("may not contain NUL characters (\\u0000)")
    return text


Text = Annotated[str, AfterValidator(_no_nul)]
