"""The SLOs' part of the meter fold: minute buckets written in the meter projector's transaction.

Each SLO version has checkpoints of its own (stores.slos.slo_offsets), as meters do. A version
whose checkpoint equals the partition's is live and is folded with every batch the meters fold, in
the same transaction, from the same de-duplicated events; one defined later (or a revision) starts
at offset zero and is caught up from the log until it is live, skipping the records the live fold
dropped (duplicates, dead letters), so it covers the whole history exactly once.

With no SLO defined, a batch costs one query that finds no rows.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from omni import metrics
from projections import slos as slo_view
from schemas.envelope import Envelope, decode, recorded_time_of
from schemas.slos import SloWindow
from stores import slos as slo_store
from stores import views
from stores.database import Database, Tx
from streams.log import LogRecord

Shown = Callable[[], None]  # a batch's SLO counts and alert states, for the metrics once it has committed


@dataclass(frozen=True, slots=True)
class SloLag:
    slo: str  # the version's fold id
    owner: str
    name: str
    version: int
    partition: int
    start: int
    end: int


class SloFold:
    """The SLOs folded from one topic's batches, beside a MeterProjector of that topic."""

    def __init__(self, db: Database, topic: str, consumer: str) -> None:
        self.db = db
        self.topic = topic
        self.consumer = consumer  # whose partition checkpoints the SLOs follow
        self._compiled: dict[str, slo_view.CompiledSlo] = {}  # by fold id: a version never changes
        # The SLOs whose series this process exports: (owner, name) -> the version shown.
        self._shown: dict[tuple[str, str], int] = {}
        # A replay's bulk pass folds one partition after another: a platform SLO (every partition's
        # events) would find every event of the later partitions late, and its alerts would not be
        # the live fold's. Then it folds the tenants' SLOs only, and the platform's are left behind
        # for the catch-up, which walks every partition together (catch_up).
        self.tenants_only = False

    def _compile(self, row: slo_store.SloRow) -> slo_view.CompiledSlo:
        key = slo_view.fold_id(row.owner, row.name, row.version)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = slo_view.compile_slo(row.owner, row.name, row.version, row.definition)
        return compiled

    def fold_live(
        self, tx: Tx, partition: int, start: int, end: int, events: Sequence[tuple[LogRecord, Envelope]]
    ) -> list[Shown]:
        """Inside the meter projector's transaction: fold a batch [start, end) into the live SLOs
        and move their checkpoints with the partition's. Returns what the metrics show once the
        transaction has committed."""
        rows = slo_store.definitions(tx)
        self._forget_ended(rows)
        if not rows:
            return []
        offsets = slo_store.checkpoints(tx, self.topic, partition)
        live = [c for c in map(self._compile, rows) if offsets.get((c.fold_id, partition), 0) == start]
        if self.tenants_only:
            live = [c for c in live if c.owner != slo_view.PLATFORM]
        if not live:
            return []
        shown = self._fold(tx, rows, live, (event for _, event in events))
        slo_store.set_checkpoints(tx, self.topic, partition, {c.fold_id: end for c in live})
        return shown

    def _forget_ended(self, rows: Sequence[slo_store.SloRow]) -> None:
        """Drop the series of SLO versions ended since this process showed them: deleted, or replaced
        (by a revision, or by the name put again after a deletion, whose catch-up shows it anew). A
        deleted SLO's alert would otherwise read firing until the process restarts."""
        live = {(row.owner, row.name): row.version for row in rows}
        for key, version in list(self._shown.items()):
            if live.get(key) != version:
                _unshow(*key, alerts_only=key in live)  # a new version goes on counting its name's events
                del self._shown[key]

    def _fold(
        self, tx: Tx, rows: Sequence[slo_store.SloRow], slos: Sequence[slo_view.CompiledSlo], events: Iterable[Envelope]
    ) -> list[Shown]:
        """Merge the events' buckets, and move the alerts of the SLOs they count, noting each
        transition (evaluated against the buckets before this batch's, then the batch in order)."""
        deltas, judged = slo_view.fold_batch(slo_view.SloIndex(slos), events)
        shown: list[Shown] = []
        if judged:
            by_id = {slo_view.fold_id(r.owner, r.name, r.version): r for r in rows}
            states = slo_store.alert_states(tx, sorted(judged))
            # Read again under the alerts' locks: a revision or deletion committed since `rows` were
            # read has resolved the ended version's alerts (stores.slos.resolve_ended, which takes
            # the same locks), and the ended version must not fire again (PostgreSQL reads each
            # statement's committed rows; SQLite's writes come one at a time).
            live_now = {slo_view.fold_id(r.owner, r.name, r.version) for r in slo_store.definitions(tx)}
            for slo, seen in sorted(judged.items()):
                if slo not in live_now:
                    continue
                state, row = states[slo], by_id[slo]
                if state is not None and max(run[0] for run in seen) <= state.open:
                    before: dict[int, slo_view.GoodTotal] = {}  # no minute completes: nothing is evaluated
                else:
                    end = (seen[0][0] if state is None else state.open) + slo_view.MINUTE
                    before = slo_store.minute_counts(tx, slo, end - slo_view.LONGEST, end)
                moved, transitions = slo_view.evaluate_alerts(
                    state, before, seen, row.definition.objective, row.definition.window
                )
                if moved is not None and moved != state:
                    slo_store.set_alert_state(tx, slo, moved)
                if transitions:
                    slo_store.add_alert_notifications(tx, row, slo, transitions)
                shown.append(functools.partial(_show, row, seen, moved))
                self._shown[(row.owner, row.name)] = row.version
        slo_store.merge(tx, deltas)
        return shown

    def lagging(self) -> list[SloLag]:
        """SLO versions that have not yet folded everything the partition checkpoint has passed."""
        with self.db.transaction() as tx:
            rows = slo_store.definitions(tx)
            if not rows:
                return []
            heads = views.checkpoints(tx, self.consumer, self.topic)
            offsets = slo_store.checkpoints(tx, self.topic)
        found = []
        for row in rows:
            key = slo_view.fold_id(row.owner, row.name, row.version)
            for partition, head in sorted(heads.items()):
                start = offsets.get((key, partition), 0)
                if start < head:
                    found.append(SloLag(key, row.owner, row.name, row.version, partition, start, head))
        return found

    def catch_up(self, lags: Sequence[SloLag], records: Mapping[int, Sequence[LogRecord]]) -> int:
        """Fold records (by partition, each from its lag's start) into one lagging SLO version; return
        how many offsets it advanced. Every partition's records are walked together, merged in the
        order they were recorded, as the live fold met them: walked one partition after another, a
        platform SLO would find every event of the later partitions late, so their alerts would
        never fire. A partition whose records were not all read holds the others back at its last
        one's recorded time (it goes whole, so each call advances)."""
        if not lags:
            return 0
        first = lags[0]
        with self.db.transaction() as tx:
            row = slo_store.one(tx, first.owner, first.name)
            if row is None or row.version != first.version:
                return 0  # revised since
            current = slo_store.checkpoints(tx, self.topic)
            taken: list[_Taken] = []
            for lag in lags:
                head = views.lock_checkpoint(tx, self.consumer, self.topic, lag.partition)
                at = current.get((lag.slo, lag.partition), 0)
                if at >= head or at != lag.start:
                    continue  # moved by someone else since `records` were read: read again
                batch = [r for r in records.get(lag.partition, ()) if at <= r.offset < head]
                taken.append(_Taken(lag.partition, at, head, batch, _recorded(batch)))
            cut, holding = _cut(taken)
            streams = []
            for part in taken:
                count = len(part.batch) if part.partition == holding else part.before(cut)
                part.take(count)
                dropped = views.dropped_between(tx, self.topic, part.partition, part.start, part.end)
                streams.append(
                    [
                        (part.times[i], part.partition, r.offset, r)
                        for i, r in enumerate(part.batch[:count])
                        if r.offset not in dropped
                    ]
                )
            merged = heapq.merge(*streams, key=lambda item: item[:3])
            shown = self._fold(tx, [row], [self._compile(row)], (decode(item[3].value) for item in merged))
            for part in taken:
                if part.end > part.start:
                    slo_store.set_checkpoints(tx, self.topic, part.partition, {first.slo: part.end})
        for show in shown:  # committed
            show()
        return sum(part.end - part.start for part in taken)


@dataclass(slots=True)
class _Taken:
    """What a catch-up reads of one partition, [start, head) of it, and takes: up to `end`."""

    partition: int
    start: int
    head: int
    batch: list[LogRecord]
    times: list[float]  # each record's recorded time (epoch seconds)
    end: int = 0

    @property
    def whole(self) -> bool:
        """Whether the batch reaches the head (or nothing below the head is left: a gap)."""
        return not self.batch or self.batch[-1].offset + 1 >= self.head

    def before(self, cut: float | None) -> int:
        """How many of the batch's first records were recorded by `cut` (all: no cut)."""
        if cut is None:
            return len(self.batch)
        count = 0
        while count < len(self.batch) and self.times[count] <= cut:
            count += 1
        return count

    def take(self, count: int) -> None:
        if count == len(self.batch) and self.whole:
            self.end = min(self.batch[-1].offset + 1, self.head) if self.batch else self.head
        else:
            self.end = self.batch[count - 1].offset + 1 if count else self.start


def _recorded(batch: Sequence[LogRecord]) -> list[float]:
    """Each record's recorded time; an unreadable record (a dead letter) takes the one before it."""
    times, last = [], float("-inf")
    for record in batch:
        moment = recorded_time_of(record.value)
        last = last if moment is None else moment.timestamp()
        times.append(last)
    return times


def _cut(taken: Sequence[_Taken]) -> tuple[float | None, int | None]:
    """The recorded time no partition is walked past in this call, and the partition that sets it
    (of those with more to read, the one whose batch ends earliest); (None, None) when every batch is whole."""
    partial = [(part.times[-1], part.partition) for part in taken if not part.whole]
    if not partial:
        return None, None
    return min(partial)


def _show(row: slo_store.SloRow, judged: Sequence[slo_view.Run], state: slo_view.AlertState | None) -> None:
    good, total = sum(run[1] for run in judged), sum(run[2] for run in judged)
    metrics.SLO_EVENTS.labels(row.owner, row.name, "good").inc(good)
    metrics.SLO_EVENTS.labels(row.owner, row.name, "bad").inc(total - good)
    window = row.definition.window
    for other in SloWindow:  # a revision that changed the window: the old window's objective is gone
        if other is not window:
            with contextlib.suppress(KeyError):
                metrics.SLO_OBJECTIVE.remove(row.owner, row.name, other.value)
    # As the rules' slo:objective:ratio writes it (99.9 is 0.999, not 0.9990000000000001).
    metrics.SLO_OBJECTIVE.labels(row.owner, row.name, window.value).set(float(Decimal(repr(row.definition.objective)) / 100))
    for alert in slo_view.ALERTS:
        metrics.SLO_ALERT_FIRING.labels(row.owner, row.name, alert).set(1 if state and alert in state.firing else 0)


def _unshow(owner: str, name: str, *, alerts_only: bool = False) -> None:
    """Remove the series of one SLO: every one, or its alerts' alone (a version ended, another follows)."""
    labelled = [(metrics.SLO_ALERT_FIRING, alert) for alert in slo_view.ALERTS]
    if not alerts_only:
        labelled += [(metrics.SLO_EVENTS, outcome) for outcome in ("good", "bad")]
        labelled += [(metrics.SLO_OBJECTIVE, window.value) for window in SloWindow]
    for series, last in labelled:
        with contextlib.suppress(KeyError):
            series.remove(owner, name, last)
