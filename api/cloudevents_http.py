"""The CloudEvents HTTP protocol binding's other shapes, brought to the JSON format admission reads.

- Binary mode: the attributes as `ce-*` headers (percent-encoded), the data as the body, its media
  type as `Content-Type` (the event's `datacontenttype`). Told by its `ce-specversion` header and a
  `Content-Type` that is not a CloudEvents format's: structured and batched mode may carry the same
  headers beside the event in the body (the binding, sections 3 and 3.2.3), and the body is the
  event then, not its data.
- `data_base64` (the JSON format's binary data), in either mode's events.

Omni meters what it can read, so data arrives at admission as JSON: a JSON media type (or none, as
the CloudEvents SDK sends JSON data in binary mode) is parsed, text is kept as text, and any other
(opaque bytes) is refused with the reason, since no meter could read it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import orjson

PREFIX = "ce-"
SPECVERSION_HEADER = "ce-specversion"
# A Content-Type with this prefix is structured or batched mode, whatever ce-* headers come with it.
FORMAT_PREFIX = "application/cloudevents"


class Unreadable(ValueError):
    """Data that no meter could read, or that is not what its media type says."""


def is_binary_mode(headers: Mapping[str, str]) -> bool:
    """Binary mode: a `ce-specversion` header, and a `Content-Type` that names no event format."""
    return SPECVERSION_HEADER in headers and not headers.get("content-type", "").lstrip().lower().startswith(FORMAT_PREFIX)


# Header names that are no attribute of binary mode: its data is the body, and its Content-Type the
# datacontenttype (the binding, 3.1.1 and 3.1.2). Taken as attributes, a `ce-data_base64` header
# became the data metered.
_NOT_ATTRIBUTES = {
    "data": "the data is the body",
    "data_base64": "the data is the body",
    "datacontenttype": "Content-Type carries it (the binding, 3.1.1: this header must not be present)",
}


def from_binary(sent: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """One event in the JSON format from a binary-mode request's headers, each as sent (names in
    lower case). An attribute or `Content-Type` sent twice is refused: taking either would name an
    event (its id, its source, its version) the client may not have meant, and a proxy that joins
    repeated headers would name another."""
    headers: dict[str, str] = {}
    for name, value in sent.items() if isinstance(sent, Mapping) else sent:
        if name in headers and (name.startswith(PREFIX) or name == "content-type"):
            raise Unreadable(f"header {name} is sent more than once: an attribute takes one value")
        headers.setdefault(name, value)
    event: dict[str, Any] = {
        name.removeprefix(PREFIX): _attribute(name, value) for name, value in headers.items() if name.startswith(PREFIX)
    }
    media = headers.get("content-type")
    if media:
        event["datacontenttype"] = media
    if body:
        event["data"] = _readable(body, media)
    return event


def binary_id(sent: Iterable[tuple[str, str]]) -> str | None:
    """The event's id as a refusal of its binary-mode request names it: its one readable `ce-id`
    header, or None (none, two, or one that does not decode)."""
    ids = [value for name, value in sent if name == "ce-id"]
    if len(ids) != 1:
        return None
    try:
        return _attribute("ce-id", ids[0])
    except Unreadable:
        return None


_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _attribute(header: str, value: str) -> str:
    """A header's attribute value, percent-decoded (the binding, 3.1.3.2): header values are printable
    ASCII, and percent-encoded bytes must be UTF-8 ("encoded byte sequences which are invalid in
    UTF-8 MUST be rejected"). Decoded leniently, bytes sent raw became other text (UTF-8 read as
    Latin-1), and any invalid sequence U+FFFD, so two events' distinct ids could become one."""
    name = header.removeprefix(PREFIX)
    if name in _NOT_ATTRIBUTES:
        raise Unreadable(f"header {header} names no attribute in binary mode: {_NOT_ATTRIBUTES[name]}")
    if not value.isascii():
        raise Unreadable(f"header {header} holds characters outside ASCII: percent-encode its UTF-8 bytes (%C3%A9 for é)")
    if _STRAY_PERCENT.search(value):  # "a%" and "a%25" both read as "a%": two ids would be one
        raise Unreadable(f"header {header} holds a % that begins no percent-encoded byte: send a % as %25")
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise Unreadable(f"header {header} is percent-encoded bytes that are not UTF-8") from None


def with_readable_data(item: Any) -> Any:
    """`item` with its `data_base64` decoded into `data` (a new dict), or unchanged without one (a
    null one is left out)."""
    if not isinstance(item, dict) or "data_base64" not in item:
        return item
    if item["data_base64"] is None:  # JSON null is an unset member (CloudEvents JSON format, 2.2)
        return {key: value for key, value in item.items() if key != "data_base64"}
    if "data" in item:
        raise Unreadable("an event carries either data or data_base64, not both")
    encoded = item["data_base64"]
    if not isinstance(encoded, str):
        raise Unreadable("data_base64 must be base64 text")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as broken:
        raise Unreadable(f"data_base64 is not valid base64: {broken}") from None
    readable = {key: value for key, value in item.items() if key != "data_base64"}
    readable["data"] = _readable(raw, item.get("datacontenttype"))
    return readable


def _readable(raw: bytes, media: Any) -> Any:
    kind = str(media or "").split(";")[0].strip().lower()
    if not kind or kind == "application/json" or kind.endswith("+json"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as broken:
            if kind:
                raise Unreadable(f"data of type {kind} is not valid JSON: {broken}") from None
    if not kind or kind.startswith("text/"):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Unreadable(f"data of type {kind or 'unknown'} is not UTF-8 text") from None
    raise Unreadable(f"data of type {kind} cannot be metered: send JSON (or text), as data or data_base64")
