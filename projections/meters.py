"""The usage-meter projection: events folded into per-minute buckets.

A bucket is keyed by (tenant, meter, minute, subject, group values). The same
deltas are also rolled up into hour and day buckets (keyed the same way) and
into totals per window that drop the subject and the group values, so a query
reads the coarsest buckets that fit its windows (see meter_query.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import orjson

from projections.meter_state import EMPTY, BucketState, combine, observe
from schemas.envelope import Envelope
from schemas.meters import Aggregation, MeterDefinition, path_parts

MINUTE = 60
HOUR = 3600
DAY = 86400
RESOLUTIONS = (MINUTE, HOUR, DAY)  # bucket sizes in seconds; UTC days are whole multiples of DAY since the epoch


class BucketKey(NamedTuple):
    tenant_id: str
    meter: str
    window_start: int  # epoch seconds, a whole minute
    subject: str
    group_key: str  # canonical JSON object of the group-by values


class TotalKey(NamedTuple):
    """A bucket of every subject and group value together."""

    tenant_id: str
    meter: str
    window_start: int


@dataclass(frozen=True, slots=True)
class CompiledMeter:
    definition: MeterDefinition
    value_path: tuple[str, ...] | None
    group_paths: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def slug(self) -> str:
        return self.definition.slug

    @property
    def aggregation(self) -> Aggregation:
        return self.definition.aggregation


def compile_meter(definition: MeterDefinition) -> CompiledMeter:
    return CompiledMeter(
        definition=definition,
        value_path=path_parts(definition.value_property) if definition.value_property else None,
        group_paths=tuple(sorted((key, path_parts(path)) for key, path in definition.group_by.items())),
    )


class MeterIndex:
    """Meters by the event type they count, compiled once."""

    def __init__(self, definitions: Iterable[MeterDefinition]) -> None:
        self.by_type: dict[str, list[CompiledMeter]] = {}
        self.by_slug: dict[str, CompiledMeter] = {}
        for definition in definitions:
            compiled = compile_meter(definition)
            self.by_type.setdefault(definition.event_type, []).append(compiled)
            self.by_slug[definition.slug] = compiled

    def only(self, slugs: Iterable[str]) -> MeterIndex:
        wanted = set(slugs)
        return MeterIndex(m.definition for m in self.by_slug.values() if m.slug in wanted)


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


MAX_MAGNITUDE = Decimal(10) ** 38
MIN_EXPONENT = -18  # at most 18 decimal places


def numeric(value: Any) -> Decimal | None:
    """A number a meter can sum exactly, or None.

    Finite, below 1e38 in magnitude, at most 18 decimal places: within those
    bounds every sum fits meter_state's 120-digit context, so it is exact and
    independent of order, and no value can overflow the fold.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        number = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        if not number.is_finite():
            return None
    else:
        return None
    exponent = number.as_tuple().exponent
    if abs(number) >= MAX_MAGNITUDE or not isinstance(exponent, int) or exponent < MIN_EXPONENT:
        return None
    return number


def unique_token(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return orjson.dumps(value).decode()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def micros_of(event: Envelope) -> int:
    """Event time in whole microseconds: integer arithmetic, so no float rounding."""
    return (event.event_time - EPOCH) // MICROSECOND


def contribution(meter: CompiledMeter, event: Envelope, doc: Mapping[str, Any]) -> Any | None:
    """The value this event adds to the meter, or None when it adds nothing."""
    if meter.aggregation is Aggregation.COUNT:
        return True
    raw = lookup(doc, meter.value_path or ())
    if meter.aggregation is Aggregation.UNIQUE_COUNT:
        return unique_token(raw)
    return numeric(raw)


def group_key(meter: CompiledMeter, doc: Mapping[str, Any]) -> str:
    groups = {}
    for key, parts in meter.group_paths:
        value = lookup(doc, parts)
        groups[key] = value if not isinstance(value, (dict, list)) else None
    return orjson.dumps(groups, option=orjson.OPT_SORT_KEYS).decode()


def apply(
    view: dict[BucketKey, BucketState],
    meters: MeterIndex,
    event: Envelope,
    offset: int,
) -> dict[BucketKey, BucketState]:
    """Fold one event (at `offset` in its partition) into the buckets of every meter it feeds."""
    candidates = meters.by_type.get(event.type)
    if not candidates:
        return view
    doc = document(event)
    micros = micros_of(event)
    minute = micros // 60_000_000 * MINUTE
    at = (micros, offset)
    for meter in candidates:
        value = contribution(meter, event, doc)
        if value is None:
            continue
        key = BucketKey(event.tenant_id, meter.slug, minute, event.subject or "", group_key(meter, doc))
        view[key] = observe(view.get(key, EMPTY), meter.aggregation, value, at)
    return view


def coarser(deltas: Mapping[BucketKey, BucketState], resolution: int) -> dict[BucketKey, BucketState]:
    """The same buckets, with their windows widened to `resolution` seconds (a multiple of theirs)."""
    out: dict[BucketKey, BucketState] = {}
    for key, state in deltas.items():
        wide = BucketKey(key.tenant_id, key.meter, key.window_start // resolution * resolution, key.subject, key.group_key)
        out[wide] = combine(out[wide], state) if wide in out else state
    return out


def totals(deltas: Mapping[BucketKey, BucketState]) -> dict[TotalKey, BucketState]:
    """The buckets of each window combined across subjects and group values."""
    out: dict[TotalKey, BucketState] = {}
    for key, state in deltas.items():
        total = TotalKey(key.tenant_id, key.meter, key.window_start)
        out[total] = combine(out[total], state) if total in out else state
    return out


def roll_ups(minutes: Mapping[BucketKey, BucketState]) -> dict[int, dict[BucketKey, BucketState]]:
    """Minute deltas, and the same deltas rolled up into every coarser resolution."""
    levels: dict[int, dict[BucketKey, BucketState]] = {MINUTE: dict(minutes)}
    finer = levels[MINUTE]
    for resolution in RESOLUTIONS[1:]:
        finer = levels[resolution] = coarser(finer, resolution)
    return levels
