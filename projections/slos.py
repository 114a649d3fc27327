"""The SLO projection: which events an SLO counts, whether each is good, and what the counts say.

Events are folded into per-minute buckets of (good, total) by event time, per SLO version and
tenant: a late event lands in the minute it happened in, so the answers do not depend on the order
of arrival. From buckets, for a moment `now`: the SLI over the SLO's window, its error budget, the
burn rates over 5m..3d and the SRE workbook's multi-window multi-burn-rate alerts (chapter 5,
"Alerting on SLOs", approach 6), their thresholds scaled to the SLO's window.

An event the selector matches but whose SLI value is missing or not a number is not counted: it
cannot be judged, and counting it as good would hide a broken producer. A window without counted
events has no data (None), never 100%.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from projections.meters import Reader, _reader, micros_of, numeric, read
from schemas.envelope import Envelope, format_time
from schemas.meters import path_parts
from schemas.slos import SloBody, SloWindow

MINUTE = 60
HOUR = 3600
DAY = 86400
SERVER_ERROR = 500

# Burn-rate windows, as the API keys them.
BURN_WINDOWS: dict[str, int] = {
    "5m": 5 * MINUTE,
    "30m": 30 * MINUTE,
    "1h": HOUR,
    "2h": 2 * HOUR,
    "6h": 6 * HOUR,
    "1d": DAY,
    "3d": 3 * DAY,
}


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Fires when the burn rate over both windows is above the threshold: the long window says the
    budget is going fast enough to matter, the short one that it still is (so it resolves soon)."""

    long: str
    short: str
    budget_share: Decimal  # of the whole window's budget, spent over `long` at the threshold's rate


# The workbook's table for a 30-day SLO: 2% of the budget in 1h and 5% in 6h page (burn rates
# 14.4 and 6); 10% in 1d and 10% in 3d open a ticket (3 and 1).
PAGE = (AlertRule("1h", "5m", Decimal("0.02")), AlertRule("6h", "30m", Decimal("0.05")))
TICKET = (AlertRule("1d", "2h", Decimal("0.10")), AlertRule("3d", "6h", Decimal("0.10")))


def threshold(rule: AlertRule, window: SloWindow) -> Decimal:
    """The burn rate at which `rule` spends its share of the budget over its long window: share x
    SLO window / long window. 14.4 for a 30-day SLO's 1h page; 3.36 for a 7-day one's."""
    return rule.budget_share * window.seconds / BURN_WINDOWS[rule.long]


class Bucket(NamedTuple):
    slo: str  # the SLO version's fold id (fold_id)
    tenant_id: str
    minute: int  # epoch seconds, a whole minute


class GoodTotal(NamedTuple):
    good: int
    total: int


NONE = GoodTotal(0, 0)


def fold_id(owner: str, name: str, version: int) -> str:
    """The buckets' key of one SLO version: a revision is folded afresh from the start of the log."""
    return f"{owner}/{name}/{version}"


@dataclass(frozen=True, slots=True)
class CompiledSlo:
    fold_id: str
    owner: str  # a tenant id, or PLATFORM for every tenant's events
    event_type: str
    match: tuple[tuple[Reader, Any], ...]
    availability: bool
    value_reader: Reader
    threshold_ms: Decimal | None


PLATFORM = "_platform"


def compile_slo(owner: str, name: str, version: int, body: SloBody) -> CompiledSlo:
    value = body.status_property if body.status_property is not None else body.latency_property
    assert value is not None  # SloBody._consistent
    return CompiledSlo(
        fold_id=fold_id(owner, name, version),
        owner=owner,
        event_type=body.event_type,
        match=tuple((_reader(path_parts(path)), expected) for path, expected in sorted(body.match.items())),
        availability=body.status_property is not None,
        value_reader=_reader(path_parts(value)),
        threshold_ms=None if body.threshold_ms is None else Decimal(repr(body.threshold_ms)),
    )


class SloIndex:
    """SLOs by the event type they count, compiled once per batch."""

    def __init__(self, slos: Iterable[CompiledSlo]) -> None:
        self.by_type: dict[str, list[CompiledSlo]] = {}
        for slo in slos:
            self.by_type.setdefault(slo.event_type, []).append(slo)


def _equal(actual: Any, expected: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, (dict, list)):
        return False
    return bool(actual == expected)


def judge(slo: CompiledSlo, event: Envelope) -> bool | None:
    """Whether `event` is good for `slo`; None when the SLO does not count it."""
    if event.type != slo.event_type or (slo.owner != PLATFORM and event.tenant_id != slo.owner):
        return None
    for reader, expected in slo.match:
        if not _equal(read(event, reader), expected):
            return None
    value = numeric(read(event, slo.value_reader))
    if value is None:
        return None
    if slo.availability:
        return value < SERVER_ERROR
    assert slo.threshold_ms is not None
    return value <= slo.threshold_ms


def apply(view: dict[Bucket, GoodTotal], slos: SloIndex, event: Envelope) -> dict[Bucket, GoodTotal]:
    """Fold one event into the minute buckets of every SLO that counts it."""
    candidates = slos.by_type.get(event.type)
    if not candidates:
        return view
    minute = micros_of(event) // 60_000_000 * MINUTE
    for slo in candidates:
        good = judge(slo, event)
        if good is None:
            continue
        key = Bucket(slo.fold_id, event.tenant_id, minute)
        known = view.get(key, NONE)
        view[key] = GoodTotal(known.good + good, known.total + 1)
    return view


# Reading: windows, budgets, burn rates, alerts ------------------------------------------------


def window_end(now: datetime) -> int:
    """The end (exclusive) of every window read at `now`: the end of now's minute, so it counts."""
    return int(now.timestamp()) // MINUTE * MINUTE + MINUTE


def spans(end: int, window: SloWindow) -> dict[str, tuple[int, int]]:
    """[start, end) of the SLO's window (key "slo") and of each burn-rate window, ending at `end`."""
    found = {"slo": (end - window.seconds, end)}
    found.update({label: (end - seconds, end) for label, seconds in BURN_WINDOWS.items()})
    return found


def counts_in(minutes: Mapping[int, GoodTotal], start: int, end: int) -> GoodTotal:
    """The counts of the minute buckets in [start, end)."""
    good = total = 0
    for minute, counts in minutes.items():
        if start <= minute < end:
            good += counts.good
            total += counts.total
    return GoodTotal(good, total)


def sli(counts: GoodTotal) -> float | None:
    return None if counts.total == 0 else counts.good / counts.total


def burn_rate(counts: GoodTotal, objective: float) -> float | None:
    """How fast the budget goes: the error rate over the budget's (1 = spent exactly at the window's end)."""
    if counts.total == 0:
        return None
    allowed = (Decimal(100) - Decimal(repr(objective))) / 100
    return float(Decimal(counts.total - counts.good) / counts.total / allowed)


@dataclass(frozen=True, slots=True)
class Budget:
    """Over the SLO's window, in events: what the objective allows to be bad, what was, what is left."""

    total: float | None
    consumed: int | None
    remaining: float | None
    consumed_share: float | None
    remaining_share: float | None


def budget(counts: GoodTotal, objective: float) -> Budget:
    if counts.total == 0:
        return Budget(None, None, None, None, None)
    allowed = Decimal(counts.total) * (Decimal(100) - Decimal(repr(objective))) / 100
    bad = counts.total - counts.good
    share = Decimal(bad) / allowed
    return Budget(float(allowed), bad, float(allowed - bad), float(share), float(1 - share))


def firing(rules: Iterable[AlertRule], rates: Mapping[str, float | None], window: SloWindow) -> bool:
    """Whether any rule's long and short windows both burn faster than its threshold."""
    for rule in rules:
        limit = float(threshold(rule, window))
        long, short = rates[rule.long], rates[rule.short]
        if long is not None and short is not None and long > limit and short > limit:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Report:
    as_of: str
    good: int
    total: int
    sli: float | None
    budget: Budget
    burn_rates: dict[str, float | None]
    page: bool
    ticket: bool


def report(end: int, counts: Mapping[str, GoodTotal], objective: float, window: SloWindow) -> Report:
    """What an SLO's status says, from the counts over each of `spans(end, window)`."""
    over = counts["slo"]
    rates = {label: burn_rate(counts[label], objective) for label in BURN_WINDOWS}
    return Report(
        as_of=format_time(datetime.fromtimestamp(end, tz=UTC)),
        good=over.good,
        total=over.total,
        sli=sli(over),
        budget=budget(over, objective),
        burn_rates=rates,
        page=firing(PAGE, rates, window),
        ticket=firing(TICKET, rates, window),
    )


def history(minutes: Mapping[int, GoodTotal], start: int, end: int, size: int) -> list[tuple[int, GoodTotal]]:
    """The counts per window of `size` seconds over [start, end), every window listed."""
    out = []
    for at in range(start, end, size):
        out.append((at, counts_in(minutes, at, min(at + size, end))))
    return out


# The definitions' view, folded from control-plane events ------------------------------------


@dataclass(frozen=True, slots=True)
class SloDefined:
    owner: str
    name: str
    version: int
    definition: dict[str, Any]
    at: str


def changes(event: Envelope) -> list[SloDefined]:
    """What one control-plane event changes in the SLO definitions. Other types change nothing."""
    if event.type != "omni.slo.defined":
        return []
    data: dict[str, Any] = event.data or {}
    at = format_time(event.event_time)
    return [SloDefined(data["owner"], data["name"], int(data["version"]), data["definition"], at)]
