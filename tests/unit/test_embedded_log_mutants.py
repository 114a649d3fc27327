"""The embedded log's group commit goes on after a lone request fails: a request that arrived while
it was being committed is committed without waiting for another one. (Written for a mutant `make
mutation` found alive in EmbeddedLog._commit_waiting.)"""

from __future__ import annotations

import asyncio

from schemas.envelope import encode
from streams.embedded_log import EmbeddedLog
from tests.unit import test_embedded_group_commit
from tests.unit.test_embedded_group_commit import KEEP, envelope, stored

log = test_embedded_group_commit.log  # the fixture: an embedded log on a fresh file


async def test_a_request_that_came_during_a_lone_failing_commit_is_committed_after_it(log: EmbeddedLog) -> None:
    bad = envelope("b", source="\ud800", tenant="attacker")  # SQLite cannot bind its key: it fails alone
    failing = asyncio.create_task(log.ingest([bad], [KEEP], [encode(envelope("b", tenant="attacker"))]))
    for _ in range(100):  # until the committer has taken the failing request as a group of its own
        await asyncio.sleep(0)
        if failing.done() or not log._waiting:
            break
    good = asyncio.create_task(log.ingest([envelope("g")], [KEEP]))
    assert await asyncio.wait_for(good, 3.0) == [True]
    assert isinstance((await asyncio.gather(failing, return_exceptions=True))[0], UnicodeEncodeError)
    assert await stored(log) == [("victim", "g")]
