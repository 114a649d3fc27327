"""The meter fold's definitions as first written: a meter's paths evaluated on the event's
CloudEvent shape, one dict per event. projections.meters computes the same without building
that dict; tests hold it to these, and compute ground truths with them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from projections.meters import CompiledMeter, numeric, unique_token
from schemas.envelope import Envelope
from schemas.meters import Aggregation, path_parts


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


def contribution(meter: CompiledMeter, event: Envelope, doc: Mapping[str, Any]) -> Any | None:
    """The value this event adds to the meter, or None when it adds nothing."""
    if meter.aggregation is Aggregation.COUNT:
        return True
    value_property = meter.definition.value_property
    raw = lookup(doc, path_parts(value_property) if value_property else ())
    if meter.aggregation is Aggregation.UNIQUE_COUNT:
        return unique_token(raw)
    return numeric(raw)


def group_key(meter: CompiledMeter, doc: Mapping[str, Any]) -> str:
    """The bucket's group values as canonical JSON, a dict or list as null."""
    groups = {}
    for key, path in sorted(meter.definition.group_by.items()):
        value = lookup(doc, path_parts(path))
        groups[key] = value if not isinstance(value, (dict, list)) else None
    return orjson.dumps(groups, option=orjson.OPT_SORT_KEYS).decode()
