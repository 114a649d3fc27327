"""Meter queries answered straight from the raw events, with none of the code under test: no bucket
states, no roll-ups, no plans. Contract, parity and soak tests hold the views to these answers.

It restates the rules of README "Meters" the plain way: the first occurrence of each (tenant, source,
id) on the log counts; an event with a NUL in any text counts nowhere; a meter's value is read from
the event as its CloudEvent (tests/meter_reference.py); each window of the query (UTC minute, hour,
day or month, or one window over the whole range) aggregates the events whose time falls in it,
per subject and group values when asked; edge windows are cut to [from, to). With a time zone, an
hour, day or month is the zone's local one, found by calendar arithmetic on its wall clock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

from schemas.envelope import Envelope
from schemas.meters import Aggregation, MeterDefinition, WindowSize, path_parts
from tests.meter_reference import LONGEST_KEPT, document, lookup, reference_numeric, reference_token

Row = tuple[datetime, datetime, str | None, str, Decimal | int | None]  # start, end, subject, group JSON, value


@dataclass(frozen=True)
class Query:
    start: datetime | None = None
    end: datetime | None = None
    window_size: WindowSize | None = None
    group_by: Sequence[str] = ()
    by_subject: bool = False
    subjects: Sequence[str] = ()
    filters: Mapping[str, Sequence[str]] = field(default_factory=dict)  # dimension: any of these values
    zone: str = "UTC"  # the IANA time zone of the hours, days and months


def counted(log: Iterable[tuple[int, Envelope]]) -> list[tuple[int, Envelope]]:
    """The events that count, in log order: none holding a NUL, and of the others each (tenant,
    source, id) once, its first."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for offset, event in sorted(log, key=lambda pair: pair[0]):
        if "\\u0000" in json.dumps([event.subject, event.data, event.extensions, event.source, event.source_id, event.type]):
            continue  # dead-lettered: it counts nowhere, not even as the first of its id
        key = (event.tenant_id, event.source, event.source_id)
        if key in seen:
            continue
        seen.add(key)
        out.append((offset, event))
    return out


def answer(log: Iterable[tuple[int, Envelope]], tenant: str, meter: MeterDefinition, query: Query) -> list[Row]:
    """The rows GET /v1/meters/{slug}/query shows, sorted by window, subject and group values."""
    return answer_counted(counted(log), tenant, meter, query)


def answer_counted(events: list[tuple[int, Envelope]], tenant: str, meter: MeterDefinition, query: Query) -> list[Row]:
    """`answer` of events that are `counted` already (for a test that asks many queries of one log)."""
    observations: list[tuple[datetime, int, str | None, str, Any]] = []
    for offset, event in events:
        if event.tenant_id != tenant or event.type != meter.event_type:
            continue
        subject = event.subject or ""
        if query.subjects and subject not in query.subjects:
            continue
        if not all(_holds(meter, event, name, values) for name, values in query.filters.items()):
            continue
        moment = event.event_time.astimezone(UTC)
        if query.start is not None and moment < query.start:
            continue
        if query.end is not None and moment >= query.end:
            continue
        value = _value(meter, event)
        if value is None:
            continue
        groups = _groups(meter, event, query.group_by)
        observations.append((moment, offset, subject if query.by_subject else None, groups, value))
    if not observations:
        return []
    windows: dict[tuple[datetime, datetime, str | None, str], list[tuple[datetime, int, Any]]] = {}
    whole = _whole(query, [moment for moment, *_ in observations])
    for moment, offset, subject, groups, value in observations:
        lower, upper = whole if query.window_size is None else _window(moment, query.window_size, query.zone)
        lower = max(lower, query.start) if query.start is not None else lower
        upper = min(upper, query.end) if query.end is not None else upper
        windows.setdefault((lower, upper, subject, groups), []).append((moment, offset, value))
    rows = [
        (lower, upper, subject, groups, _aggregate(meter.aggregation, values))
        for (lower, upper, subject, groups), values in windows.items()
    ]
    return sorted(rows, key=lambda row: (row[0], row[2] or "", row[3]))


def _plain(value: Any) -> Any:
    """A personal value sealed at admission reads as its pseudonym (README "What is sealed")."""
    if isinstance(value, dict) and value.get("omni_sealed") == 1:
        return value.get("ps")
    return value


def _value(meter: MeterDefinition, event: Envelope) -> Any:
    if meter.aggregation is Aggregation.COUNT:
        return 1
    raw = _plain(lookup(document(event), path_parts(meter.value_property or "$")))
    if meter.aggregation is Aggregation.UNIQUE_COUNT:
        return reference_token(raw)
    return reference_numeric(raw)


def _groups(meter: MeterDefinition, event: Envelope, wanted: Sequence[str]) -> str:
    """The requested group values as canonical JSON (a container as null, a long text as its digest)."""
    shown = {}
    for name in sorted(wanted):
        value = _plain(lookup(document(event), path_parts(meter.group_by[name]))) if name in meter.group_by else None
        if isinstance(value, (dict, list)):
            value = None
        elif isinstance(value, str) and len(value) > LONGEST_KEPT:
            value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
        shown[name] = value
    return json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _holds(meter: MeterDefinition, event: Envelope, dimension: str, values: Sequence[str]) -> bool:
    """Whether the event's value of `dimension` is one of `values` as a query string names them: a
    text as itself, a number, boolean or null (none in the event) as its JSON text."""
    value = _plain(lookup(document(event), path_parts(meter.group_by[dimension])))
    if isinstance(value, (dict, list)):
        value = None
    return (value if isinstance(value, str) else json.dumps(value)) in values


def _aggregate(aggregation: Aggregation, values: list[tuple[datetime, int, Any]]) -> Decimal | int | None:
    numbers = [value for _, _, value in values]
    with localcontext() as exact:
        exact.prec = 200  # wider than any sum of values below 1e38 with 18 decimal places
        match aggregation:
            case Aggregation.COUNT:
                return len(numbers)
            case Aggregation.UNIQUE_COUNT:
                return len(set(numbers))
            case Aggregation.SUM:
                return sum(numbers, Decimal(0))
            case Aggregation.MIN:
                return min(numbers)
            case Aggregation.MAX:
                return max(numbers)
            case Aggregation.LATEST:
                return max(values, key=lambda v: (v[0], v[1]))[2]
            case Aggregation.AVG:
                total = sum(numbers, Decimal(0))
    with localcontext() as quotient:
        quotient.prec = 34  # an average is shown to IEEE decimal128's precision
        return total / len(numbers)


def _window(moment: datetime, size: WindowSize, zone: str = "UTC") -> tuple[datetime, datetime]:
    if zone != "UTC" and size is not WindowSize.MINUTE:
        return _local_window(moment, size, ZoneInfo(zone))
    if size is WindowSize.MINUTE:
        start = moment.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if size is WindowSize.HOUR:
        start = moment.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if size is WindowSize.DAY:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    return start, datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)


def _local_window(moment: datetime, size: WindowSize, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The zone's local hour (an hour long, from the wall clock's last full hour: a repeated hour is
    two; the zones asked here change clocks by whole hours), day or month (from the first midnight of
    that date to the first of the next one)."""
    wall = moment.astimezone(zone)
    if size is WindowSize.HOUR:
        start = wall.replace(minute=0, second=0, microsecond=0)
        return start.astimezone(UTC), start.astimezone(UTC) + timedelta(hours=1)
    if size is WindowSize.DAY:
        first, following = wall.date(), wall.date() + timedelta(days=1)
    else:
        first = wall.date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    return _midnight(first, zone), _midnight(following, zone)


def _midnight(day: Any, zone: ZoneInfo) -> datetime:
    """The first instant of a local date: its midnight, or where clocks skip midnight, the moment
    they skip (Python's fold 0 of a skipped time is the offset before the change)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _whole(query: Query, moments: list[datetime]) -> tuple[datetime, datetime]:
    """Without a window size, one window: [from, to), each defaulting to the first minute with a
    counted value and the end of the last one."""
    first = min(moments).replace(second=0, microsecond=0)
    last = max(moments).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return (query.start or first, query.end or last)


def shown(rows: Iterable[Any]) -> list[Row]:
    """Rows of views.query_meter (MeterRow) in the truth's form: group values as canonical JSON."""
    return sorted(
        (
            (
                r.window_start,
                r.window_end,
                r.subject,
                json.dumps(r.group_by, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
                r.value,
            )
            for r in rows
        ),
        key=lambda row: (row[0], row[2] or "", row[3]),
    )


def thresholds_reached(
    log: Iterable[tuple[int, Envelope]], meter: MeterDefinition, quotas: dict[str, tuple[Decimal, str, Sequence[int]]]
) -> set[tuple[str, str, str, int]]:
    """The threshold notifications a quota log holds once everything is folded, as (tenant, meter,
    period, threshold), the period as `D:2026-12-04` or `M:2026-12`: every threshold the tenant's
    usage of the meter reached in a period, by event time (UTC). `quotas` maps a tenant to its
    (limit, "DAY" | "MONTH", thresholds). Usage only grows here (positive values)."""
    used: dict[tuple[str, str], Decimal] = {}
    for _, event in counted(log):
        if event.type != meter.event_type or event.tenant_id not in quotas:
            continue
        value = _value(meter, event)
        if value is None:
            continue
        moment = event.event_time.astimezone(UTC)
        period = moment.strftime("D:%Y-%m-%d") if quotas[event.tenant_id][1] == "DAY" else moment.strftime("M:%Y-%m")
        used[(event.tenant_id, period)] = used.get((event.tenant_id, period), Decimal(0)) + Decimal(value)
    found = set()
    for (tenant, period), total in used.items():
        limit, _, thresholds = quotas[tenant]
        for threshold in thresholds:
            if total > 0 if limit == 0 else total * 100 >= limit * threshold:
                found.add((tenant, meter.slug, period, threshold))
    return found


def slo_minutes(log: Iterable[tuple[int, Envelope]], owner: str, slo: dict[str, Any]) -> dict[tuple[str, int], tuple[int, int]]:
    """An SLO's (good, total) per (tenant, minute of event time), restated from README "SLOs": the
    events that count (as for meters), of the SLO's type, of its owner's tenant unless the owner is
    `_platform`, equal at every `match` path (JSON equality: true is not 1); the value at the SLI's
    path a number (else not counted); good below 500 (availability) or at most threshold_ms (latency)."""
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for _, event in counted(log):
        if event.type != slo["event_type"] or (owner != "_platform" and event.tenant_id != owner):
            continue
        doc = document(event)
        found = [(lookup(doc, path_parts(path)), want) for path, want in slo.get("match", {}).items()]
        if not all(_json_equal(f, want) for f, want in found):
            continue
        path = slo["status_property"] if slo["sli"] == "availability" else slo["latency_property"]
        value = reference_numeric(lookup(doc, path_parts(path)))
        if value is None:
            continue
        good = value < 500 if slo["sli"] == "availability" else value <= Decimal(str(slo["threshold_ms"]))
        minute = int(event.event_time.timestamp()) // 60 * 60
        g, t = out.get((event.tenant_id, minute), (0, 0))
        out[(event.tenant_id, minute)] = (g + int(good), t + 1)
    return out


def _json_equal(found: Any, want: Any) -> bool:
    if isinstance(found, bool) or isinstance(want, bool):
        return found is want
    return not isinstance(found, (dict, list)) and bool(found == want)


@dataclass(frozen=True)
class Gdpr:
    """The GDPR control state, as README "GDPR" says the views hold it."""

    data_classes: dict[str, tuple[int, dict[str, Any]]]  # event type -> (newest version, its definition)
    requests: dict[str, tuple[str, str, str, str]]  # id -> (tenant, subject, kind, status: its last step's)
    unfinished: list[str]  # ids of the requests with no completed or failed step (the resumer's), in receipt order
    breaches: dict[str, tuple[str, str, bool]]  # id -> (detected at, deadline: 72 hours on, notified)
    overdue: set[str]  # past the deadline at `now` and not notified
    retention: dict[str, tuple[int | None, int]]  # tenant -> (days, version)


def gdpr_state(control: Iterable[Envelope], now: datetime) -> Gdpr:
    """The GDPR state a control topic's events give, in log order, at `now`."""
    classes: dict[str, tuple[int, dict[str, Any]]] = {}
    requests: dict[str, list[str]] = {}  # id -> [tenant, subject, kind, status]
    received: list[str] = []
    ended: set[str] = set()
    breaches: dict[str, tuple[str, str, bool]] = {}
    retention: dict[str, tuple[int | None, int]] = {}
    for event in control:
        data: dict[str, Any] = event.data
        match event.type:
            case "omni.data_class.defined":
                if data["event_type"] not in classes or classes[data["event_type"]][0] < data["version"]:
                    classes[data["event_type"]] = (data["version"], data["definition"])
            case "omni.gdpr.request_received":
                requests[data["id"]] = [data["tenant_id"], data["subject"], data["kind"], "received"]
                received.append(data["id"])
            case "omni.gdpr.request_updated":
                requests[data["id"]][3] = data["status"]
                if data["status"] in ("completed", "failed"):
                    ended.add(data["id"])
            case "omni.gdpr.breach_recorded":
                detected = datetime.fromisoformat(data["detected_at"])
                breaches[data["id"]] = (data["detected_at"], _rfc3339(detected + timedelta(hours=72)), False)
            case "omni.gdpr.breach_notified":
                detected_at, deadline, _ = breaches[data["id"]]
                breaches[data["id"]] = (detected_at, deadline, True)
            case "omni.gdpr.retention_set":
                if data["tenant_id"] not in retention or retention[data["tenant_id"]][1] < data["version"]:
                    retention[data["tenant_id"]] = (data["personal_data_days"], data["version"])
    return Gdpr(
        data_classes=classes,
        requests={i: (t, s, k, status) for i, (t, s, k, status) in requests.items()},
        unfinished=[i for i in received if i not in ended],
        breaches=breaches,
        overdue={
            i for i, (_, deadline, notified) in breaches.items() if not notified and datetime.fromisoformat(deadline) <= now
        },
        retention=retention,
    )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
