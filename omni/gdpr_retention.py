"""The retention sweeper: a tenant's persons idle for longer than its retention period lose their data key.

Each shredding is an erasure request of its own, made and run through the same path as a data
subject's (omni.gdpr_jobs): `omni.gdpr.request_received` with the reason `retention`, running, the
key deleted, `omni.gdpr.subject_erased`, completed, each with its audit entry. Its id is derived
from the tenant, the person and the key id (commands.gdpr.retention_request_id), so a restart or a
second process never records it twice: the event store refuses the second, and the sweeper runs
the one recorded if it did not complete. One process sweeps at a time (a leadership, as the
notices relay has), in the background of the API processes, in both modes.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from commands.control_plane import CommandContext
from omni.leading import lead_every
from schemas.envelope import format_time, parse_time
from schemas.gdpr import RequestStatus, due_for_shredding, retention_cutoff
from stores import data_keys
from stores import gdpr as gdpr_store

if TYPE_CHECKING:
    from omni.bootstrap import Platform

log = logging.getLogger(__name__)

LEADER = "gdpr-retention"
SWEEP_EVERY_SECONDS = 60.0
PAGE = 200  # persons per tenant per sweep: a long backlog is worked off over several sweeps
ACTOR = "retention"  # the audit entries' actor: the platform itself, not an API key


class RetentionSweeper:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Shred the keys of every tenant's persons due at `now` (default: the clock); how many."""
        platform = self.platform
        moment = now or datetime.now(UTC)

        def periods() -> dict[str, int]:
            with platform.db.transaction() as tx:
                return gdpr_store.retention_periods(tx)

        shredded = 0
        for tenant_id, days in (await asyncio.to_thread(periods)).items():
            cutoff = format_time(retention_cutoff(moment, days))

            def idle(tenant: str = tenant_id, before: str = cutoff) -> list[data_keys.Idle]:
                with platform.personal.keys_db.transaction() as tx:
                    return data_keys.idle(tx, tenant, before, PAGE)

            found = {person.subject: person for person in await asyncio.to_thread(idle)}
            last_seen = {subject: parse_time(person.last_seen_at) for subject, person in found.items()}
            for subject in due_for_shredding(last_seen, days, moment):
                await self._shred(tenant_id, found[subject], days)
                shredded += 1
        return shredded

    async def _shred(self, tenant_id: str, person: data_keys.Idle, days: int) -> None:
        platform = self.platform
        ctx = CommandContext(tenant_id=tenant_id, key_id=ACTOR)
        request = await platform.run_command(
            platform.control.receive_retention_erasure, ctx, tenant_id, person.subject, person.key_id, days
        )
        if request.status == RequestStatus.COMPLETED.value:
            return  # recorded and run before: its key is erased since
        # New, or left unfinished by a process that stopped, or failed: (again) as a request is run,
        # under its claim (a job that runs it now, such as the resumer's, is left to end it).
        await platform.gdpr_jobs.run_claimed(ctx, tenant_id, str(request.id), again_if_failed=True)

    async def run(self, stop: asyncio.Event) -> None:
        async def step() -> None:
            shredded = await self.sweep_once()
            if shredded:
                log.info("retention: %d data keys shredded", shredded)

        await lead_every(self.platform.db, LEADER, SWEEP_EVERY_SECONDS, stop, step, "retention sweeper")
