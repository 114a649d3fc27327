"""The meter fold's definitions as first written: a meter's paths evaluated on the event's
CloudEvent shape, one dict per event. projections.meters computes the same without building
that dict; tests hold it to these, and compute ground truths with them."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from projections.meters import CompiledMeter
from schemas.envelope import Envelope
from schemas.meters import Aggregation, path_parts

# Text longer than this (a group value, a UNIQUE_COUNT token's JSON) is kept as its SHA-256.
LONGEST_KEPT = 256


def document(event: Envelope) -> dict[str, Any]:
    """What a meter's JSON paths are evaluated against: the CloudEvent's shape."""
    return {
        "id": event.source_id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        "data": event.data,
        **event.extensions,
    }


def lookup(doc: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def reference_numeric(value: Any) -> Decimal | None:
    """The number a meter takes from a value, or None: an int or a finite float, or a string that
    holds one JSON number (as Python's json module parses a document, numbers as Decimals, so
    JSON's grammar and whitespace), below 1e38 in magnitude with at most 18 decimal places."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value, parse_int=Decimal, parse_float=Decimal, parse_constant=_no_constant)
        except (ValueError, ArithmeticError, RecursionError):
            return None
        if type(parsed) is not Decimal:
            return None
        number = parsed
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        number = Decimal(repr(value))
    else:
        return None
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int) or exponent < -18 or number.copy_abs() >= Decimal(10) ** 38:
        return None
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no number")


def reference_token(value: Any) -> str | None:
    """What UNIQUE_COUNT counts of a value: its JSON text (a long one as its digest); nothing of a
    container or null."""
    if value is None or isinstance(value, (dict, list)):
        return None
    return _kept(orjson.dumps(value).decode())


def _kept(text: str) -> str:
    return text if len(text) <= LONGEST_KEPT else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def contribution(meter: CompiledMeter, event: Envelope, doc: Mapping[str, Any]) -> Any | None:
    """The value this event adds to the meter, or None when it adds nothing."""
    if meter.aggregation is Aggregation.COUNT:
        return True
    value_property = meter.definition.value_property
    raw = lookup(doc, path_parts(value_property) if value_property else ())
    if meter.aggregation is Aggregation.UNIQUE_COUNT:
        return reference_token(raw)
    return reference_numeric(raw)


def group_key(meter: CompiledMeter, doc: Mapping[str, Any]) -> str:
    """The bucket's group values as canonical JSON, a dict or list as null, a long text as its digest."""
    groups = {}
    for key, path in sorted(meter.definition.group_by.items()):
        value = lookup(doc, path_parts(path))
        if isinstance(value, (dict, list)):
            value = None
        elif isinstance(value, str):
            value = _kept(value)
        groups[key] = value
    return orjson.dumps(groups, option=orjson.OPT_SORT_KEYS).decode()
