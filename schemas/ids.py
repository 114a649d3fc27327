"""Identifiers as the API takes them: one spelling per resource."""

from __future__ import annotations

from uuid import UUID


def canonical_uuid(text: str) -> str | None:
    """The canonical form (lowercase, hyphenated) of any spelling Python's UUID reads (upper case,
    braces, `urn:uuid:`, no hyphens), or None for text that is no UUID. Ids are compared as text
    everywhere (views, keys, events), so every id taken from outside goes through here first."""
    try:
        return str(UUID(text))
    except ValueError:
        return None
