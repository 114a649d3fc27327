"""A replay's diff compares the rebuild with the live views at the same place in the log: records
the live folds have not folded yet are no difference (a replay job's own audit entry is on the log
before the live audit fold takes it), and when the live folds move on while the replay folds, the
rebuild folds on to where they are before it compares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omni.bootstrap import build_replayer
from streams.log import LogRecord
from streams.replay import Mode, Progress, Request
from tests.e2e.conftest import Omni, embedded_settings, served


@pytest.fixture
async def omni(tmp_path: Path) -> AsyncIterator[Omni]:
    async with served(embedded_settings(tmp_path / "data")) as running:
        await running.tenant("a")
        await running.settle()
        await running.tenant("b")  # its commands' audit entries (and catalog events) ...
        while await running.platform.relay.relay_once():  # ... are on the log, not yet in the live views
            pass
        yield running


async def unfolded_audit(omni: Omni) -> dict[int, list[LogRecord]]:
    platform = omni.platform
    with platform.db.transaction() as tx:
        rows = tx.execute("SELECT partition, next_offset FROM checkpoints WHERE consumer = 'audit'")
    folded = {int(p): int(o) for p, o in rows}
    found = {}
    for partition in range(platform.topics.partitions(platform.topics.audit)):
        records = await platform.log.read(platform.topics.audit, partition, folded.get(partition, 0), 1000)
        if records:
            found[partition] = records
    assert found, "the test needs audit records the live fold has not taken"
    return found


async def test_a_diff_does_not_count_what_the_live_folds_have_not_folded_yet(omni: Omni) -> None:
    await unfolded_audit(omni)
    replayer = build_replayer(omni.platform.settings, omni.platform.db, omni.platform.log)
    outcome = await replayer.run(Request(("audit", "catalog"), Mode.DIFF))
    assert outcome.differences == []


async def test_a_diff_folds_on_to_where_the_live_folds_moved_meanwhile(omni: Omni) -> None:
    pending = await unfolded_audit(omni)
    audit = omni.platform.runner.audit
    assert audit is not None

    def live_folds_on(progress: Progress) -> None:  # as the live audit fold does, while the replay runs
        for partition, records in list(pending.items()):
            audit.process(partition, records)
            del pending[partition]

    replayer = build_replayer(omni.platform.settings, omni.platform.db, omni.platform.log)
    outcome = await replayer.run(Request(("audit",), Mode.DIFF), on_progress=live_folds_on)
    assert not pending and outcome.differences == []
