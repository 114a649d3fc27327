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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import NAMESPACE_URL, uuid5

from projections.meters import Reader, micros_of, numeric, read, reader_of
from schemas.envelope import Envelope, format_time
from schemas.meters import path_parts
from schemas.slos import SloBody, SloWindow
from schemas.topics import API_CALL_SOURCE, API_CALL_TYPE

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
        match=tuple((reader_of(path_parts(path)), expected) for path, expected in sorted(body.match.items())),
        availability=body.status_property is not None,
        value_reader=reader_of(path_parts(value)),
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
    if slo.owner == PLATFORM and event.type == API_CALL_TYPE and event.source != API_CALL_SOURCE:
        return None  # the platform's API calls are the API's own records: a tenant's "api_call" forged them
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


# What one SLO judged in a batch, in log order, as runs of one minute: [minute, good, total]. (Events
# arrive mostly in order, so a batch of thousands is a few runs: the alerts walk runs, not events.)
Run = list[int]
Judged = dict[str, list[Run]]  # per SLO version (fold id)


def fold_batch(slos: SloIndex, events: Iterable[Envelope]) -> tuple[dict[Bucket, GoodTotal], Judged]:
    """A batch's bucket deltas, and what each SLO judged in order (what its alerts fold)."""
    view: dict[Bucket, GoodTotal] = {}
    judged: Judged = {}
    for event in events:
        candidates = slos.by_type.get(event.type)
        if not candidates:
            continue
        minute = micros_of(event) // 60_000_000 * MINUTE
        for slo in candidates:
            good = judge(slo, event)
            if good is None:
                continue
            key = Bucket(slo.fold_id, event.tenant_id, minute)
            known = view.get(key, NONE)
            view[key] = GoodTotal(known.good + good, known.total + 1)
            runs = judged.get(slo.fold_id)
            if runs is None:
                judged[slo.fold_id] = [[minute, int(good), 1]]
            elif runs[-1][0] == minute:
                last = runs[-1]
                last[1] += good
                last[2] += 1
            else:
                runs.append([minute, int(good), 1])
    return view, judged


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


# Alert transitions, folded by event time ------------------------------------------------------

ALERT_FIRED = "omni.slo.alert_fired"
ALERT_RESOLVED = "omni.slo.alert_resolved"
ALERTS: dict[str, tuple[AlertRule, ...]] = {"page": PAGE, "ticket": TICKET}
LONGEST = max(BURN_WINDOWS.values())
NOTICES = uuid5(NAMESPACE_URL, "https://omni.dev/ids/notifications")  # projections.quotas.NOTICES


@dataclass(frozen=True, slots=True)
class AlertState:
    """Where one SLO version's alerts stand: `open` is the latest minute of event time folded (the
    minute still filling); every minute before it has been evaluated; `firing` names the alerts
    firing after the last evaluation."""

    open: int
    firing: frozenset[str]


@dataclass(frozen=True, slots=True)
class Transition:
    alert: str  # "page" or "ticket"
    firing: bool  # fired (True) or resolved
    at: int  # the moment evaluated: the end of the minute that completed (epoch seconds)
    burn_rates: dict[str, float | None]

    @property
    def type(self) -> str:
        return ALERT_FIRED if self.firing else ALERT_RESOLVED


def alert_notice_id(slo: str, transition: Transition) -> str:
    """One id per (SLO version, alert, direction, moment): refolding the same log finds the same ones."""
    direction = "fired" if transition.firing else "resolved"
    return str(uuid5(NOTICES, f"slo-alert/{slo}/{transition.alert}/{direction}/{transition.at}"))


class BurnWindows:
    """The counts over each burn-rate window ending at `end`, kept current as minutes are added and
    the end moves on, so evaluating every minute of a long stretch costs a few additions each."""

    def __init__(self, end: int, minutes: Mapping[int, GoodTotal]) -> None:
        self.end = end
        self.minutes = {m: c for m, c in minutes.items() if end - LONGEST <= m}
        self.sums = {label: counts_in(self.minutes, end - seconds, end) for label, seconds in BURN_WINDOWS.items()}

    def _shift(self, minute: int, counts: GoodTotal, sign: int) -> None:
        for label, seconds in BURN_WINDOWS.items():
            if self.end - seconds <= minute < self.end:
                known = self.sums[label]
                self.sums[label] = GoodTotal(known.good + sign * counts.good, known.total + sign * counts.total)

    def add(self, minute: int, good: int, total: int) -> None:
        if minute < self.end - LONGEST:
            return  # older than every window: it counts in the SLI, never in an alert
        known = self.minutes.get(minute, NONE)
        self.minutes[minute] = GoodTotal(known.good + good, known.total + total)
        self._shift(minute, GoodTotal(good, total), 1)

    def advance(self) -> None:
        """Move the end on by one minute: the minute at the old end comes in, the oldest go out."""
        leaving = {label: self.end - seconds for label, seconds in BURN_WINDOWS.items()}
        entering = self.minutes.get(self.end)
        for label, minute in leaving.items():
            counts = self.minutes.get(minute)
            if counts is not None:
                known = self.sums[label]
                self.sums[label] = GoodTotal(known.good - counts.good, known.total - counts.total)
            if entering is not None:
                known = self.sums[label]
                self.sums[label] = GoodTotal(known.good + entering.good, known.total + entering.total)
        self.minutes.pop(self.end - LONGEST, None)
        self.end += MINUTE

    def empty(self) -> bool:
        return self.sums["3d"].total == 0

    def rates(self, objective: float) -> dict[str, float | None]:
        return {label: burn_rate(self.sums[label], objective) for label in BURN_WINDOWS}


def evaluate_alerts(
    state: AlertState | None,
    before: Mapping[int, GoodTotal],
    judged: Sequence[Sequence[int]],
    objective: float,
    window: SloWindow,
) -> tuple[AlertState | None, list[Transition]]:
    """Fold judged events, runs of (minute, good, total) in log order, into an SLO version's alerts.

    `before` holds the counts per minute already folded (every tenant's, at least the 3 days
    before `state.open`). A minute is evaluated, with the windows ending at its end, when the first
    event of a later minute arrives: in log order, so the same log gives the same transitions
    however it is cut into batches. An event of a minute already evaluated (late, or from a
    partition behind another) counts from the next evaluation on: it may fire or resolve an alert
    late, never rewrite one."""
    if not judged:
        return state, []
    open_ = judged[0][0] if state is None else state.open
    on = set() if state is None else set(state.firing)
    sums = BurnWindows(open_ + MINUTE, before)
    found: list[Transition] = []
    for minute, good, total in judged:
        while minute > open_:
            rates = sums.rates(objective)
            for alert, rules in ALERTS.items():
                now = firing(rules, rates, window)
                if now != (alert in on):
                    found.append(Transition(alert, now, open_ + MINUTE, rates))
                    (on.add if now else on.discard)(alert)
            if sums.empty():  # nothing in any window, so nothing fires until an event comes: skip ahead
                open_ = minute
                sums = BurnWindows(open_ + MINUTE, {})
            else:
                sums.advance()
                open_ += MINUTE
        sums.add(minute, good, total)
    return AlertState(open_, frozenset(on)), found


def state_after_swap(live: AlertState, replayed: AlertState | None) -> AlertState:
    """Which alert state goes on after a replay's swap. The live state's transitions were notified
    up to its `open`; the replay's may sit a minute or two away where a platform SLO's partitions
    committed in another order. The live state wins unless the replay evaluated further: then its
    later transitions are new, and its state is the one they lead to."""
    if replayed is None or live.open >= replayed.open:
        return live
    return replayed


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


@dataclass(frozen=True, slots=True)
class SloDeleted:
    """The SLO's `version` ends: it and any earlier version are no longer read, folded or alerted on."""

    owner: str
    name: str
    version: int
    at: str


def changes(event: Envelope) -> list[SloDefined | SloDeleted]:
    """What one control-plane event changes in the SLO definitions. Other types change nothing."""
    data: dict[str, Any] = event.data or {}
    match event.type:
        case "omni.slo.defined":
            at = format_time(event.event_time)
            return [SloDefined(data["owner"], data["name"], int(data["version"]), data["definition"], at)]
        case "omni.slo.deleted":
            return [SloDeleted(data["owner"], data["name"], int(data["version"]), format_time(event.event_time))]
    return []
