"""The SLOs' part of the meter fold: minute buckets written in the meter projector's transaction.

Each SLO version has checkpoints of its own (stores.slos.slo_offsets), as meters do. A version
whose checkpoint equals the partition's is live and is folded with every batch the meters fold, in
the same transaction, from the same de-duplicated events; one defined later (or a revision) starts
at offset zero and is caught up from the log until it is live, skipping the records the live fold
dropped (duplicates, dead letters), so it covers the whole history exactly once.

With no SLO defined, a batch costs one query that finds no rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from omni import metrics
from projections import slos as slo_view
from schemas.envelope import Envelope, decode
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
        if not rows:
            return []
        offsets = slo_store.checkpoints(tx, self.topic, partition)
        live = [c for c in map(self._compile, rows) if offsets.get((c.fold_id, partition), 0) == start]
        if not live:
            return []
        shown = self._fold(tx, rows, live, (event for _, event in events))
        slo_store.set_checkpoints(tx, self.topic, partition, {c.fold_id: end for c in live})
        return shown

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
            for slo, seen in sorted(judged.items()):
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

    def catch_up(self, lag: SloLag, records: Sequence[LogRecord]) -> int:
        """Fold records [lag.start, ...) into one lagging SLO version; return how many offsets it advanced."""
        with self.db.transaction() as tx:
            head = views.lock_checkpoint(tx, self.consumer, self.topic, lag.partition)
            current = slo_store.checkpoints(tx, self.topic, lag.partition).get((lag.slo, lag.partition), 0)
            row = slo_store.one(tx, lag.owner, lag.name)
            if row is None or row.version != lag.version or current >= head or current != lag.start:
                return 0  # revised, or moved by someone else since `records` were read: read again
            batch = [r for r in records if current <= r.offset < head]
            end = min(batch[-1].offset + 1, head) if batch else head  # nothing below the head: a gap
            dropped = views.dropped_between(tx, self.topic, lag.partition, current, end)
            events = (decode(r.value) for r in batch if r.offset not in dropped)
            shown = self._fold(tx, [row], [self._compile(row)], events)
            slo_store.set_checkpoints(tx, self.topic, lag.partition, {lag.slo: end})
        for show in shown:  # committed
            show()
        return end - current


def _show(row: slo_store.SloRow, judged: Sequence[slo_view.Run], state: slo_view.AlertState | None) -> None:
    good, total = sum(run[1] for run in judged), sum(run[2] for run in judged)
    metrics.SLO_EVENTS.labels(row.owner, row.name, "good").inc(good)
    metrics.SLO_EVENTS.labels(row.owner, row.name, "bad").inc(total - good)
    metrics.SLO_OBJECTIVE.labels(row.owner, row.name, row.definition.window.value).set(row.definition.objective / 100)
    for alert in slo_view.ALERTS:
        metrics.SLO_ALERT_FIRING.labels(row.owner, row.name, alert).set(1 if state and alert in state.firing else 0)
