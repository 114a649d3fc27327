"""The meters' fold in bulk, for rebuilds: the buckets `apply` gives, accumulated in place.

`apply` makes a new immutable BucketState per event and meter, with Decimal arithmetic, and the
roll-ups combine those states again per bucket. A rebuild folds millions of events into buckets
that nothing reads until the end, so here each bucket is a mutable cell, numbers that are small
ints stay Python ints (exact, and a few times cheaper than Decimal), and the event's values are
read from the wire layout as decoded (schemas.envelope.Wire) without building an Envelope. The
cells give exactly the states `apply` and `combine` give (`states`, `roll_ups`): the same sums
(an int sum is the Decimal sum of the same ints, exponent 0), the same minimum and maximum (of
equal values, the plainer text: an int's exponent is 0, as Decimal(int)'s, and of zeros the unsigned), the same LATEST (the
greatest (event time, offset), the first one met of equal ones, as `observe` and `combine` keep
the state they had) and the same unique tokens. Property tests hold them to `apply`
(tests/unit/test_meter_bulk.py) and the rebuild that uses them to the streaming fold
(tests/contract/test_bulk_meters_on_each_database.py).

Pure: no I/O. Cells are written by stores.views.append_cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from projections.meter_state import EXACT, BucketState
from projections.meters import (
    DAY,
    EPOCH,
    HOUR,
    MICROSECOND,
    MINUTE,
    BucketKey,
    CompiledMeter,
    MeterIndex,
    _numeric,
    group_key_of,
    micros_of,
    read,
    unique_token,
)
from schemas.envelope import Envelope, Wire
from schemas.meters import Aggregation

# A cell: [count, total, minimum, maximum, latest event time (µs), latest offset, latest, uniques].
# Numbers are ints where the values were (Decimal otherwise); a COUNT cell keeps its count only
# (total 0), a UNIQUE_COUNT cell its count and its set of tokens.
Cell = list[Any]
COUNT, TOTAL, LOW, HIGH, AT_US, AT_OFFSET, LATEST, UNIQUES = range(8)
Key = tuple[str, str, int, str, str]  # a BucketKey's fields: tenant, meter, minute, subject, group key
Window = tuple[str, str, int, int, str, str]  # tenant, meter, resolution, window start, subject, group key
Total = tuple[str, str, int, int]  # tenant, meter, resolution, window start
K = TypeVar("K")

_SMALL_INT = 10**28  # as projections.meters.numeric: ints inside it are values as they are
_exact_add = EXACT.add  # takes ints and Decimals alike, exactly
_COUNT = Aggregation.COUNT
_UNIQUE_COUNT = Aggregation.UNIQUE_COUNT
_MINUTE_MICROS = 60_000_000

# The Envelope attribute a path's first step names (projections.meters.Reader), as Wire names it.
_WIRE_NAMES = {"source_id": "id", "source": "source", "type": "type", "subject": "subject", "data": "data"}
WireReader = tuple[str | None, tuple[str, ...]]


def _exponent(value: int | Decimal) -> int:
    return 0 if type(value) is int else value.as_tuple().exponent  # type: ignore[union-attr, return-value]


def _plainer(value: int | Decimal, known: int | Decimal) -> bool:
    """meter_state._plainer of two equal values: the larger exponent, or of equal exponents the
    unsigned of two zeros (an int is unsigned; "-0" and -0.0 give a signed Decimal zero)."""
    value_exponent, known_exponent = _exponent(value), _exponent(known)
    return value_exponent > known_exponent or (
        value_exponent == known_exponent
        and type(known) is not int
        and known.is_signed()
        and not (type(value) is not int and value.is_signed())  # type: ignore[union-attr]
    )


def _lower(value: int | Decimal, known: int | Decimal) -> bool:
    """Whether `value` takes the minimum's place: smaller, or equal with the plainer text (meter_state._lower)."""
    return value < known or (value == known and _plainer(value, known))


def _higher(value: int | Decimal, known: int | Decimal) -> bool:
    return value > known or (value == known and _plainer(value, known))


def _wire_readers(meter: CompiledMeter) -> tuple[WireReader | None, tuple[WireReader, ...]]:
    def of(reader: tuple[str, str | None, tuple[str, ...]]) -> WireReader:
        _, attribute, rest = reader
        return (None if attribute is None else _WIRE_NAMES[attribute], rest)

    value = meter.value_reader
    return (None if value is None else of(value)), tuple(of(r) for r in meter.group_readers)


def read_wire(wire: Wire, reader: WireReader) -> Any:
    """projections.meters.read of the Envelope this wire decodes to (it has no extension attributes)."""
    attribute, rest = reader
    if attribute is None:
        return None
    doc = getattr(wire, attribute)
    for part in rest:
        if type(doc) is not dict:  # JSON objects decode to dict itself
            return None
        doc = doc.get(part)
    return doc


# What add_wire needs of one meter: the meter, its slug and aggregation, its value's wire path
# (None: a COUNT, or no value), its group values' wire paths.
PlanEntry = tuple[CompiledMeter, str, Aggregation, WireReader | None, tuple[WireReader, ...]]
Plan = dict[str, tuple[PlanEntry, ...]]  # by event type


def plan(meters: MeterIndex) -> Plan:
    """The meters of `meters` prepared for add_wire, by the event type they count."""
    found: Plan = {}
    for event_type, candidates in meters.by_type.items():
        entries = []
        for meter in candidates:
            value, groups = _wire_readers(meter)
            entries.append((meter, meter.slug, meter.aggregation, None if meter.aggregation is _COUNT else value, groups))
        found[event_type] = tuple(entries)
    return found


class BulkFold:
    """Minute buckets of many events, as `apply` folds them (in the order they are added), in cells."""

    def __init__(self) -> None:
        self.cells: dict[Key, Cell] = {}

    def __len__(self) -> int:
        return len(self.cells)

    def add_wire(self, meters: Plan, wire: Wire, offset: int) -> None:
        """Fold one event decoded in the current layout (at `offset` in its partition). The fold's
        hot path, per event: the paths read and the cell updated here, without calls where the
        values are plain (a number, a short text)."""
        entries = meters.get(wire.type)
        if entries is None:
            return
        micros = (wire.time - EPOCH) // MICROSECOND
        minute = micros // _MINUTE_MICROS * MINUTE
        tenant_id = wire.tenantid
        subject = wire.subject or ""
        cells = self.cells
        for meter, slug, aggregation, value_path, group_paths in entries:
            raw = None
            if value_path is not None:
                attribute, rest = value_path
                raw = None if attribute is None else getattr(wire, attribute)
                for part in rest:
                    if type(raw) is not dict:  # JSON objects decode to dict itself
                        raw = None
                        break
                    raw = raw.get(part)
            if not group_paths:
                group = "{}"
            elif len(group_paths) == 1:  # the common case: one dimension, a short text (cached)
                one = read_wire(wire, group_paths[0])
                values: tuple[Any, ...] = (one,)
                group = meter.group_keys.get(values) if one is None or type(one) is str else None
                if group is None:
                    group = group_key_of(meter, values)
            else:
                group = group_key_of(meter, tuple([read_wire(wire, path) for path in group_paths]))
            key = (tenant_id, slug, minute, subject, group)
            if aggregation is _COUNT or aggregation is _UNIQUE_COUNT:
                self._observe(key, aggregation, raw, micros, offset)
                continue
            if type(raw) is int and -_SMALL_INT < raw < _SMALL_INT:  # not a bool; numeric() would be Decimal(raw)
                value: int | Decimal = raw
            else:
                number = _numeric(raw)
                if number is None:
                    continue  # a value the meter skips: the bucket is not touched
                value = number
            cell = cells.get(key)
            if cell is None:
                cells[key] = [1, value, value, value, micros, offset, value, None]
            elif type(value) is int and type(cell[TOTAL]) is int:  # ints: no exponents to compare on ties
                cell[COUNT] += 1
                cell[TOTAL] += value
                if value < cell[LOW]:
                    cell[LOW] = value
                if value > cell[HIGH]:
                    cell[HIGH] = value
                at = cell[AT_US]
                if micros > at or (micros == at and offset > cell[AT_OFFSET]):
                    cell[AT_US], cell[AT_OFFSET], cell[LATEST] = micros, offset, value
            else:
                self._observe_number(key, value, micros, offset)

    def add(self, meters: MeterIndex, event: Envelope, offset: int) -> None:
        """Fold one event of any layout (an Envelope: with extension attributes, or upcast)."""
        candidates = meters.by_type.get(event.type)
        if not candidates:
            return
        micros = micros_of(event)
        minute = micros // _MINUTE_MICROS * MINUTE
        tenant_id = event.tenant_id
        subject = event.subject or ""
        for meter in candidates:
            aggregation = meter.aggregation
            reader = meter.value_reader
            raw = None if aggregation is _COUNT or reader is None else read(event, reader)
            group = group_key_of(meter, tuple(read(event, r) for r in meter.group_readers)) if meter.group_readers else "{}"
            self._observe((tenant_id, meter.slug, minute, subject, group), aggregation, raw, micros, offset)

    def _observe(self, key: Key, aggregation: Aggregation, raw: Any, micros: int, offset: int) -> None:
        """projections.meter_state.observe, in the key's cell."""
        cells = self.cells
        if aggregation is _COUNT:
            cell = cells.get(key)
            if cell is None:
                cells[key] = [1, 0, None, None, None, None, None, None]
            else:
                cell[COUNT] += 1
            return
        if aggregation is _UNIQUE_COUNT:
            token = unique_token(raw)
            if token is None:
                return
            cell = cells.get(key)
            if cell is None:
                cells[key] = [1, 0, None, None, None, None, None, {token}]
            else:
                cell[COUNT] += 1
                cell[UNIQUES].add(token)
            return
        if type(raw) is int and -_SMALL_INT < raw < _SMALL_INT:  # not a bool; numeric() would be Decimal(raw)
            value: int | Decimal = raw
        else:
            number = _numeric(raw)
            if number is None:
                return  # a value the meter skips: the bucket is not touched
            value = number
        self._observe_number(key, value, micros, offset)

    def _observe_number(self, key: Key, value: int | Decimal, micros: int, offset: int) -> None:
        """observe() of a numeric meter's value (an int, or numeric()'s Decimal)."""
        cells = self.cells
        cell = cells.get(key)
        if cell is None:
            cells[key] = [1, value, value, value, micros, offset, value, None]
            return
        cell[COUNT] += 1
        total = cell[TOTAL]
        cell[TOTAL] = total + value if type(total) is int and type(value) is int else _exact_add(total, value)
        low = cell[LOW]
        if value <= low and (value < low or _plainer(value, low)):
            cell[LOW] = value
        high = cell[HIGH]
        if value >= high and (value > high or _plainer(value, high)):
            cell[HIGH] = value
        at = cell[AT_US]
        if micros > at or (micros == at and offset > cell[AT_OFFSET]):
            cell[AT_US] = micros
            cell[AT_OFFSET] = offset
            cell[LATEST] = value

    def states(self) -> dict[BucketKey, BucketState]:
        """The minute buckets as `apply` would have left them."""
        return {BucketKey(*key): state_of(cell) for key, cell in self.cells.items()}

    def roll_ups(self) -> dict[int, dict[Key, Cell]]:
        """The minute cells, and the same rolled up into hours and days (projections.meters.roll_ups)."""
        levels: dict[int, dict[Key, Cell]] = {MINUTE: self.cells}
        finer = self.cells
        for resolution in (HOUR, DAY):
            finer = levels[resolution] = _coarser(finer, resolution)
        return levels


def _merge(into: Cell, cell: Cell) -> None:
    """into := into ⊕ cell (projections.meter_state.combine; `into` keeps LATEST on a tie)."""
    into[COUNT] += cell[COUNT]
    uniques = cell[UNIQUES]
    if uniques is not None:
        into[UNIQUES] |= uniques
        return
    low = cell[LOW]
    if low is None:  # a COUNT cell
        return
    total, value = into[TOTAL], cell[TOTAL]
    into[TOTAL] = total + value if type(total) is int and type(value) is int else _exact_add(total, value)
    if _lower(low, into[LOW]):
        into[LOW] = low
    high = cell[HIGH]
    if _higher(high, into[HIGH]):
        into[HIGH] = high
    at, known = cell[AT_US], into[AT_US]
    if at > known or (at == known and cell[AT_OFFSET] > into[AT_OFFSET]):
        into[AT_US], into[AT_OFFSET], into[LATEST] = at, cell[AT_OFFSET], cell[LATEST]


def _copy(cell: Cell) -> Cell:
    copied = list(cell)
    if copied[UNIQUES] is not None:
        copied[UNIQUES] = set(copied[UNIQUES])
    return copied


def _coarser(cells: Mapping[Key, Cell], resolution: int) -> dict[Key, Cell]:
    return _combined(((t, m, start // resolution * resolution, s, g), cell) for (t, m, start, s, g), cell in cells.items())


def totals(cells: Mapping[Key, Cell]) -> dict[tuple[str, str, int], Cell]:
    """The cells of each window combined across subjects and group values (projections.meters.totals)."""
    return _combined(((t, m, start), cell) for (t, m, start, _, _), cell in cells.items())


def _combined(keyed: Iterable[tuple[K, Cell]]) -> dict[K, Cell]:
    """The cells of each key combined (`_merge`, in the order given), the common case inline: ints."""
    out: dict[K, Cell] = {}
    for key, cell in keyed:
        known = out.get(key)
        if known is None:
            out[key] = cell.copy() if cell[UNIQUES] is None else _copy(cell)
        elif cell[LOW] is not None and type(known[TOTAL]) is int and type(cell[TOTAL]) is int:
            known[COUNT] += cell[COUNT]
            known[TOTAL] += cell[TOTAL]
            if cell[LOW] < known[LOW]:
                known[LOW] = cell[LOW]
            if cell[HIGH] > known[HIGH]:
                known[HIGH] = cell[HIGH]
            at, latest_at = cell[AT_US], known[AT_US]
            if at > latest_at or (at == latest_at and cell[AT_OFFSET] > known[AT_OFFSET]):
                known[AT_US], known[AT_OFFSET], known[LATEST] = at, cell[AT_OFFSET], cell[LATEST]
        else:
            _merge(known, cell)
    return out


def rows(levels: Mapping[int, Mapping[Key, Cell]]) -> tuple[Iterator[tuple[Window, Cell]], Iterator[tuple[Total, Cell]]]:
    """The meter_windows and meter_totals rows of every resolution: (key, cell)."""
    windows = (
        ((tenant_id, meter, resolution, window_start, subject, group), cell)
        for resolution, level in levels.items()
        for (tenant_id, meter, window_start, subject, group), cell in level.items()
    )
    overall = (
        ((tenant_id, meter, resolution, window_start), cell)
        for resolution, level in levels.items()
        for (tenant_id, meter, window_start), cell in totals(level).items()
    )
    return windows, overall


def _decimal(value: int | Decimal | None) -> Decimal | None:
    return Decimal(value) if type(value) is int else value  # type: ignore[return-value]


def state_of(cell: Cell) -> BucketState:
    count, total, low, high, at_us, at_offset, latest, uniques = cell
    return BucketState(
        count=count,
        total=Decimal(total) if type(total) is int else total,
        minimum=_decimal(low),
        maximum=_decimal(high),
        latest_at=None if at_us is None else (at_us, at_offset),
        latest=_decimal(latest),
        uniques=frozenset(uniques) if uniques else frozenset(),
    )
