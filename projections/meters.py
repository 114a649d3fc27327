"""The usage-meter projection: events folded into per-minute buckets.

A bucket is keyed by (tenant, meter, minute, subject, group values). The same
deltas are also rolled up into hour and day buckets (keyed the same way) and
into totals per window that drop the subject and the group values, so a query
reads the coarsest buckets that fit its windows (see meter_query.py).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import orjson

from projections.meter_state import EMPTY, BucketState, combine, observe
from schemas.envelope import Envelope
from schemas.gdpr import pseudonym_of
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


# A meter's JSON path compiled for reading straight from an event: (first step, the Envelope
# attribute that step names or None, the remaining steps). See `read`.
Reader = tuple[str, str | None, tuple[str, ...]]

# The CloudEvent attributes a path's first step can name, and the Envelope attribute each one is.
_ATTRIBUTES = {"id": "source_id", "source": "source", "type": "type", "subject": "subject", "data": "data"}

GROUP_KEY_CACHE_SIZE = 4096  # group keys kept per compiled meter; the cache is cleared when full

_new_tuple = tuple.__new__  # what a named tuple's own __new__ calls, without that Python frame
# An enum member read from its class costs a lookup per use (Python 3.11); these are the members.
_COUNT = Aggregation.COUNT
_UNIQUE_COUNT = Aggregation.UNIQUE_COUNT


@dataclass(frozen=True, slots=True)
class CompiledMeter:
    definition: MeterDefinition
    # The definition prepared for apply(): plain fields, not properties, as they are read per event.
    slug: str
    aggregation: Aggregation
    value_reader: Reader | None
    group_names: tuple[str, ...]
    group_readers: tuple[Reader, ...]
    # group_key's text by the tuple of the group values, when they are all str or None (see _group_key).
    group_keys: dict[tuple[str | None, ...], str] = field(default_factory=dict, compare=False, repr=False)


def reader_of(parts: tuple[str, ...]) -> Reader:
    return (parts[0], _ATTRIBUTES.get(parts[0]), parts[1:])


def compile_meter(definition: MeterDefinition) -> CompiledMeter:
    value_path = path_parts(definition.value_property) if definition.value_property else None
    group_paths = tuple(sorted((key, path_parts(path)) for key, path in definition.group_by.items()))
    return CompiledMeter(
        definition=definition,
        slug=definition.slug,
        aggregation=definition.aggregation,
        value_reader=reader_of(value_path) if value_path else None,
        group_names=tuple(key for key, _ in group_paths),
        group_readers=tuple(reader_of(parts) for _, parts in group_paths),
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


def read(event: Envelope, reader: Reader) -> Any:
    """The value at a meter's JSON path in the event seen as its CloudEvent: the first step names an
    extension attribute, else `id`, `source`, `type`, `subject` or `data`; None where nothing is."""
    head, attribute, rest = reader
    extensions = event.extensions
    if head in extensions:  # an extension attribute of that name wins over the envelope's own
        doc = extensions[head]
    elif attribute is None:
        return None
    else:
        doc = getattr(event, attribute)
    for part in rest:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


MAX_MAGNITUDE = Decimal(10) ** 38
MIN_EXPONENT = -18  # at most 18 decimal places
# Ints below this need no check but their type: far inside the bound, exponent 0.
_SMALL_INT = 10**28


def numeric(value: Any) -> Decimal | None:
    """A number a meter can sum exactly, or None.

    Finite, below 1e38 in magnitude, at most 18 decimal places: within those
    bounds every sum fits meter_state's 120-digit context, so it is exact and
    independent of order, and no value can overflow the fold.
    """
    if type(value) is int and -_SMALL_INT < value < _SMALL_INT:  # the common case (not a bool): exponent 0, in range
        return Decimal(value)
    return _numeric(value)


# JSON's number grammar (RFC 8259, section 6), in ASCII digits only, with JSON's whitespace around it:
# what a numeric string may hold. Python's Decimal also takes "1_000", "+5", "007", ".5", "5." and
# every script's digits ("١٢٣", "１２３"), and strips any Unicode space.
_JSON_NUMBER = re.compile(r"[ \t\n\r]*(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)[ \t\n\r]*")


def _numeric(value: Any) -> Decimal | None:
    """numeric() of any value, ints included: what the int fast path must agree with."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        number = Decimal(repr(value))
    elif isinstance(value, str):
        text = _JSON_NUMBER.fullmatch(value)
        if text is None:
            return None
        try:
            number = Decimal(text[1])  # a JSON number is a finite decimal: no NaN, no Infinity
        except InvalidOperation:  # an exponent beyond what Decimal can hold (1e99999999999999999999)
            return None
    else:
        return None
    exponent = number.as_tuple().exponent
    # copy_abs, not abs(): abs() rounds to the thread's decimal context (28 digits by default), which
    # refused numbers just below 1e38 and made the answer depend on that context.
    if number.copy_abs() >= MAX_MAGNITUDE or not isinstance(exponent, int) or exponent < MIN_EXPONENT:
        return None
    return number


# A group value, or a UNIQUE_COUNT token, longer than this is stored as "sha256:" and the 64 hex
# digits of its SHA-256: each is stored in every bucket it counts in (minute, hour and day; tokens in
# the totals too), so a 4 MB value took 20 MB and more. Counting stays exact (a collision would take
# one of SHA-256). A group value shows as its digest; a client that sends text of that very form
# (71 characters) for another value of the same dimension merges the two in its own usage only.
MAX_GROUP_VALUE_CHARS = 256
DIGEST_PREFIX = "sha256:"


def digest(text: str) -> str:
    return DIGEST_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def unique_token(value: Any) -> str | None:
    """What UNIQUE_COUNT counts of a value: its JSON text, or that text's digest when it is long (no
    JSON text starts with "sha256:", so a digest is never taken for a value)."""
    if value is None or isinstance(value, (dict, list)):
        # A personal value sealed at admission counts as its pseudonym (no JSON text starts with it).
        return pseudonym_of(value)
    token = orjson.dumps(value).decode()
    return token if len(token) <= MAX_GROUP_VALUE_CHARS else digest(token)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def micros_of(event: Envelope) -> int:
    """Event time in whole microseconds: integer arithmetic, so no float rounding."""
    return (event.event_time - EPOCH) // MICROSECOND


def _group_key(meter: CompiledMeter, event: Envelope) -> str:
    """The bucket's group values as canonical JSON (a dict or list as null, a long text as its
    digest), from a per-meter cache when every group value is None or a str of at most
    MAX_GROUP_VALUE_CHARS.

    Only those: other values that compare equal can have different JSON texts (1, 1.0 and True;
    0.0 and -0.0), so they would share an entry that is right for one of them only; and the cache
    would keep long texts alive (4,096 values of a few MB each).
    """
    readers = meter.group_readers
    if len(readers) == 1:  # the common case, without a comprehension's frame
        values: tuple[Any, ...] = (read(event, readers[0]),)
    else:
        values = tuple([read(event, reader) for reader in readers])
    return group_key_of(meter, values)


def group_key_of(meter: CompiledMeter, values: tuple[Any, ...]) -> str:
    """_group_key of the group values read from an event, in the order of meter.group_readers."""
    for value in values:
        if value is not None and type(value) is not str:
            return _canonical(meter.group_names, values)
    cache = meter.group_keys
    text = cache.get(values)
    if text is None:
        text = _canonical(meter.group_names, values)
        if any(value is not None and len(value) > MAX_GROUP_VALUE_CHARS for value in values):
            return text  # never cached, so never found: the cache holds only short texts
        if len(cache) >= GROUP_KEY_CACHE_SIZE:
            cache.clear()
        cache[values] = text
    return text


def _canonical(names: tuple[str, ...], values: tuple[Any, ...]) -> str:
    groups = {name: _group_value(value) for name, value in zip(names, values, strict=True)}
    return orjson.dumps(groups, option=orjson.OPT_SORT_KEYS).decode()


def group_value_texts(asked: str) -> tuple[str, ...]:
    """The stored JSON texts of the group values a dimension filter's value `asked` matches: the
    string itself (a long one by its digest, as folded), and the number, boolean or null whose JSON
    text it is (`5` matches 5, `true` true, `null` an event without the dimension). A query string
    holds only text, so that is how a typed value is named; `5` does not match 5.0."""
    texts = [orjson.dumps(_group_value(asked)).decode()]
    try:
        typed = orjson.loads(asked)
    except orjson.JSONDecodeError:
        return tuple(texts)
    if typed is None or type(typed) in (bool, int, float):
        texts.append(orjson.dumps(typed).decode())
    return tuple(texts)


def _group_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return pseudonym_of(value)  # a sealed personal value groups by its pseudonym; other objects as null
    if type(value) is str and len(value) > MAX_GROUP_VALUE_CHARS:
        return digest(value)
    return value


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
    # The fold's hot path, per event and meter: the value and the group values read from the event
    # itself (read, _group_key).
    micros = micros_of(event)
    minute = micros // 60_000_000 * MINUTE
    at = (micros, offset)
    tenant_id = event.tenant_id
    subject = event.subject or ""
    for meter in candidates:
        aggregation = meter.aggregation
        if aggregation is _COUNT:
            value: Any = True
        else:
            reader = meter.value_reader  # None only if the definition is invalid: then no value
            raw = read(event, reader) if reader is not None else None
            value = unique_token(raw) if aggregation is _UNIQUE_COUNT else numeric(raw)
            if value is None:
                continue
        group = _group_key(meter, event) if meter.group_readers else "{}"
        key = _new_tuple(BucketKey, (tenant_id, meter.slug, minute, subject, group))
        view[key] = observe(view.get(key, EMPTY), aggregation, value, at)
    return view


def coarser(deltas: Mapping[BucketKey, BucketState], resolution: int) -> dict[BucketKey, BucketState]:
    """The same buckets, with their windows widened to `resolution` seconds (a multiple of theirs)."""
    out: dict[BucketKey, BucketState] = {}
    for (tenant_id, meter, window_start, subject, group), state in deltas.items():
        wide = _new_tuple(BucketKey, (tenant_id, meter, window_start // resolution * resolution, subject, group))
        known = out.get(wide)
        out[wide] = state if known is None else combine(known, state)
    return out


def totals(deltas: Mapping[BucketKey, BucketState]) -> dict[TotalKey, BucketState]:
    """The buckets of each window combined across subjects and group values."""
    out: dict[TotalKey, BucketState] = {}
    for (tenant_id, meter, window_start, _, _), state in deltas.items():
        total = _new_tuple(TotalKey, (tenant_id, meter, window_start))
        known = out.get(total)
        out[total] = state if known is None else combine(known, state)
    return out


def roll_ups(minutes: Mapping[BucketKey, BucketState]) -> dict[int, dict[BucketKey, BucketState]]:
    """Minute deltas, and the same deltas rolled up into every coarser resolution."""
    levels: dict[int, dict[BucketKey, BucketState]] = {MINUTE: dict(minutes)}
    finer = levels[MINUTE]
    for resolution in RESOLUTIONS[1:]:
        finer = levels[resolution] = coarser(finer, resolution)
    return levels
