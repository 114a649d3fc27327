"""A swap never notifies the past again, on each database.

A platform SLO counts every partition, and a refold may find one of its transitions a minute away
(another commit order between partitions), under another id. The swap keeps the live views'
transitions up to where they had evaluated, drops the replay's of that stretch, and lets only the
replay's later ones through to the notices relay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from projections.slos import AlertState, state_after_swap
from schemas.envelope import format_time
from stores import shadow as shadows
from stores import slos as slo_store
from stores.database import Database, Tx

T = 1_796_000_400  # 2026-11-29T..., a whole minute of epoch seconds
AVAILABILITY, LATENCY, TENANT = "_platform/availability/1", "_platform/latency/2", "acme/checkout/1"


def _at(moment: int) -> str:
    return format_time(datetime.fromtimestamp(moment, tz=UTC))


def _notice(tx: Tx, id_: str, slo: str, kind: str, moment: int, recorded: int) -> None:
    owner, name, version = slo.rsplit("/", 2)
    tx.execute(
        "INSERT INTO slo_notifications VALUES (?, ?, ?, ?, ?, 'page', '{}', ?, ?)",
        (id_, owner, kind, name, int(version), _at(moment), recorded),
    )


def _alert(tx: Tx, slo: str, open_minute: int, firing: str) -> None:
    tx.execute("INSERT INTO slo_alerts VALUES (?, ?, ?)", (slo, open_minute, firing))


def _notices(db: Database) -> set[tuple[str, str, int]]:
    with db.transaction() as tx:
        return {(str(i), str(at), int(r)) for i, at, r in tx.execute("SELECT id, occurred_at, recorded FROM slo_notifications")}


def test_the_live_past_stays_and_only_what_the_replay_evaluated_beyond_it_is_new(database: Database, tmp_path: Path) -> None:
    replay = shadows.open_shadow(database, "keepspast", folder=tmp_path)
    try:
        with database.transaction() as tx:
            # availability: live fired at T-600 (sent) and is still firing at T
            _alert(tx, AVAILABILITY, T, "page")
            _notice(tx, "live-fired", AVAILABILITY, "omni.slo.alert_fired", T - 600, 1)
            # latency: live fired at T-120, not sent yet; evaluated up to T
            _alert(tx, LATENCY, T, "page")
            _notice(tx, "live-latency", LATENCY, "omni.slo.alert_fired", T - 120, 0)
            # a tenant's SLO folds in log order: the same id on both sides, sent
            _alert(tx, TENANT, T, "")
            _notice(tx, "tenant-same", TENANT, "omni.slo.alert_resolved", T - 300, 1)
        with replay.db.transaction() as tx:
            # availability: the replay fired a minute later, resolved before T, and stopped at T
            _alert(tx, AVAILABILITY, T, "")
            _notice(tx, "replay-fired", AVAILABILITY, "omni.slo.alert_fired", T - 540, 0)
            _notice(tx, "replay-resolved", AVAILABILITY, "omni.slo.alert_resolved", T, 0)
            # latency: the replay went two minutes further, and resolved in them
            _alert(tx, LATENCY, T + 120, "")
            _notice(tx, "replay-latency-moved", LATENCY, "omni.slo.alert_fired", T - 60, 0)
            _notice(tx, "replay-latency-new", LATENCY, "omni.slo.alert_resolved", T + 60, 0)
            _alert(tx, TENANT, T, "")
            _notice(tx, "tenant-same", TENANT, "omni.slo.alert_resolved", T - 300, 0)

        shadows.swap(database, replay, [shadows.FOLDS[shadows.METERS]])

        assert _notices(database) == {
            ("live-fired", _at(T - 600), 1),
            ("live-latency", _at(T - 120), 0),  # still to be sent, as before
            ("tenant-same", _at(T - 300), 1),
            ("replay-latency-new", _at(T + 60), 0),  # the only new transition
        }
        with database.transaction() as tx:
            states = slo_store.alert_states(tx, [AVAILABILITY, LATENCY, TENANT])
            to_send = [row[0] for row in slo_store.unrecorded_alerts(tx, 10)]
        assert states == {
            AVAILABILITY: AlertState(T, frozenset({"page"})),  # what was notified goes on
            LATENCY: AlertState(T + 120, frozenset()),  # the replay's, further on
            TENANT: AlertState(T, frozenset()),
        }
        assert to_send == ["live-latency", "replay-latency-new"]
    finally:
        replay.drop()


def test_the_live_state_goes_on_unless_the_replay_evaluated_further() -> None:
    live = AlertState(T, frozenset({"page"}))
    assert state_after_swap(live, None) == live
    assert state_after_swap(live, AlertState(T, frozenset())) == live
    assert state_after_swap(live, AlertState(T - 60, frozenset({"ticket"}))) == live
    further = AlertState(T + 60, frozenset({"ticket"}))
    assert state_after_swap(live, further) == further
