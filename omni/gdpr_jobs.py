"""The jobs behind GDPR requests, run in the background of the API process that received them.

Erasure: the person's data key is deleted (stores.data_keys), then what the views hold about the
person in clear (the exports made for them) goes, then `SubjectErased` and `completed` are recorded
in one save: every API process reads that save and forgets the key (omni.personal_data). The log
keeps the sealed events, unreadable; meters keep their pseudonyms, unlinkable.

Access and portability: every usage event on the log about the person (its subject, or the person
its data class names), opened, and every view row about them (a meter's bucket by its subject, or
by the person's pseudonyms among its values: row_about_person), in one JSON document kept for the
request (stores.gdpr.gdpr_exports) until the person is erased. It reads the tenant's partition of
the usage topic from its start: its cost follows the tenant's history.

Exactly once in effect: a job runs only under a claim on its request (stores.database.Claims: a
PostgreSQL advisory lock held by the process, or a name in the one embedded process), so no two
processes run one request at the same time; under the claim the request is read again from the
event store and run only if it has not ended. A process that stops leaves its requests `received` or
`running`; one process at a time (a leadership, as the retention sweeper has) looks for such
requests when it starts and every minute, and runs each to its end. Each kind may run again: an
erased key is erased again as a no-op, an export is rebuilt whole.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from eventsourcing.persistence import IntegrityError

from commands.control_plane import ACTOR_PREFIX, CommandContext
from commands.errors import NotFound
from commands.gdpr import GdprRequest
from omni import failpoints
from omni.leading import lead_every
from omni.personal_data import document_associated_data
from schemas.envelope import NewerSchema, decode, format_time
from schemas.gdpr import PSEUDONYM_PREFIX, PSEUDONYM_PREFIX_BLAKE2B, RequestKind, RequestStatus
from schemas.topics import partition_for
from stores import audit as audit_store
from stores import gdpr as gdpr_store
from stores.database import EVENT_STORE_AWAY, StoreUnavailable, Tx
from streams.log import LogUnavailable

if TYPE_CHECKING:
    from omni.bootstrap import Platform

log = logging.getLogger(__name__)
READ_PAGE = 5000
LEADER = "gdpr-jobs"
RESUME_EVERY_SECONDS = 60.0
RESUMER = "gdpr-jobs"  # the audit entries' actor of a resumed job's steps: the platform itself
ENDED = frozenset({RequestStatus.COMPLETED.value, RequestStatus.FAILED.value})


WITHHELD = "(withheld: another person's pseudonym)"


def row_about_person(row: dict[str, Any], subject: str, pseudonyms: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the export shows of a meter's day bucket for the person, or None when it is not about
    them. `pseudonyms`: the person's pseudonyms (from their events, opened) -> the values.

    A bucket is about the person by its `subject` (the whole bucket), by one of its group values
    (the whole bucket: it counts the person's events only), or by one of its distinct values alone
    (only those values: its count and totals are of everyone's events). Each of the person's
    pseudonyms shows as the value it stands for; another person's shows as WITHHELD, and their
    distinct values are left out. A pseudonym whose value no opened event held (the person's key
    erased) is not the person's any more, and shows withheld too."""
    prefixes = (PSEUDONYM_PREFIX, PSEUDONYM_PREFIX_BLAKE2B)

    def shown(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value in pseudonyms:
            return pseudonyms[value]
        return WITHHELD if value.startswith(prefixes) else value

    group = {name: shown(value) for name, value in row["group"].items()}
    uniques: list[str] = row.get("uniques", [])
    if row["subject"] == subject:
        about = "subject"
    elif any(isinstance(value, str) and value in pseudonyms for value in row["group"].values()):
        about = "group"
    elif any(token in pseudonyms for token in uniques):
        return {
            "meter": row["meter"],
            "day_start": row["day_start"],
            "about": "distinct value",
            "group": group,
            "uniques": [pseudonyms[token] for token in uniques if token in pseudonyms],
        }
    else:
        return None
    shown_row = row | {"about": about, "group": group}
    if "uniques" in row:  # plain distinct values are the bucket's; a pseudonym only if the person's
        shown_row["uniques"] = [shown(token) for token in uniques if token in pseudonyms or not token.startswith(prefixes)]
    return shown_row


def _audit_entries_of(tx: Tx, chain: str, key_id: str) -> list[dict[str, Any]]:
    """The entries of the chain whose actor is the key, as hashed."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = audit_store.entries(tx, chain, audit_store.Filters(actor=key_id), after=after, limit=READ_PAGE)
        found += [orjson.loads(body) for _, body in page]
        if len(page) < READ_PAGE:
            return found
        after = page[-1][0]


# What stops a job without being the request's fault: a dependency away. The job stops, and the
# request stays unfinished for the resumer (not `failed`).
DEPENDENCY_AWAY: tuple[type[Exception], ...] = (LogUnavailable, StoreUnavailable, *EVENT_STORE_AWAY)


class GdprJobs:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.claims = platform.db.claims()
        self._running: set[asyncio.Task[None]] = set()
        # A tenant's exports run one at a time: each reads its tenant's whole usage partition, and a
        # walkthrough's 77 at once kept the API at 70 % CPU for a minute, every tenant's requests slower.
        self._exporting: dict[str, asyncio.Lock] = {}

    def start(self, ctx: CommandContext, request: GdprRequest) -> None:
        """Run a request just received, in the background of this process (if nobody claimed it first)."""
        task = asyncio.create_task(self._start(ctx, request), name=f"gdpr-{request.id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _start(self, ctx: CommandContext, request: GdprRequest) -> None:
        try:
            await self.run_claimed(ctx, request.tenant_id, str(request.id))
        except DEPENDENCY_AWAY as away:
            # Not lost: the request stays unfinished, and the resumer runs it again once the
            # dependency is back (keep_resuming). Said once here, not as a task nobody awaited.
            log.warning(
                "GDPR request %s stopped, a dependency is unreachable (%s); it is resumed when it is back", request.id, away
            )

    async def wait(self) -> None:
        """Every job started so far has ended (tests, shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def run_claimed(
        self, ctx: CommandContext, tenant_id: str, request_id: str, *, resumed: bool = False, again_if_failed: bool = False
    ) -> bool:
        """Run the request to its end under its claim; False when another job holds the claim, or the
        request has ended (`again_if_failed`: a failed one runs again)."""
        platform = self.platform
        name = f"gdpr-request:{request_id}"
        if not await asyncio.to_thread(self.claims.claim, name):
            return False
        try:
            try:  # read again under the claim: a job that ended before it was taken has recorded its end
                request = await asyncio.to_thread(platform.control.get_gdpr_request, tenant_id, request_id)
            except NotFound:
                return False
            ended = ENDED - {RequestStatus.FAILED.value} if again_if_failed else ENDED
            if request.status in ended:
                return False
            await self.run(ctx, request, resumed=resumed)
            return True
        finally:
            await asyncio.to_thread(self.claims.release, name)

    async def resume_once(self) -> int:
        """Run every request that a stopped process left unfinished; how many ran."""
        platform = self.platform

        def unfinished() -> list[tuple[str, str]]:
            with platform.db.transaction() as tx:
                return gdpr_store.unfinished_requests(tx)

        resumed = 0
        for tenant_id, request_id in await asyncio.to_thread(unfinished):
            ctx = CommandContext(tenant_id=tenant_id, key_id=RESUMER)
            if await self.run_claimed(ctx, tenant_id, request_id, resumed=True):
                resumed += 1
        return resumed

    async def keep_resuming(self, stop: asyncio.Event) -> None:
        """While this process leads: resume unfinished requests at once, then every minute."""

        async def step() -> None:
            resumed = await self.resume_once()
            if resumed:
                log.info("GDPR: %d requests left unfinished by a stopped process were run", resumed)

        await lead_every(self.platform.db, LEADER, RESUME_EVERY_SECONDS, stop, step, "GDPR job resumer")

    async def run(self, ctx: CommandContext, request: GdprRequest, *, resumed: bool = False) -> None:
        """The job's steps (call it under the request's claim: `run_claimed`)."""
        platform = self.platform
        step = platform.control.advance_gdpr_request
        begun = f"{request.kind} resumed: the process that ran it had stopped" if resumed else f"{request.kind} started"
        try:
            await platform.run_command(step, ctx, request, RequestStatus.RUNNING, begun)
            failpoints.hit(failpoints.GDPR_AFTER_RUNNING)
            match RequestKind(request.kind):
                case RequestKind.ERASURE:
                    # After the tenant's exports queued before it, never beside one: an export that
                    # waited its turn found the key erased and kept its document unsealed.
                    async with self._exporting.setdefault(request.tenant_id, asyncio.Lock()):
                        await self._erase(ctx, request, resumed)
                case RequestKind.ACCESS | RequestKind.PORTABILITY:
                    events = await self._export(request)
                    done = f"export ready: {events} events; GET /v1/gdpr/requests/{request.id}/export"
                    await platform.run_command(step, ctx, request, RequestStatus.COMPLETED, done)
                case RequestKind.RECTIFICATION:
                    done = "recorded: the tenant corrects the data by sending corrected events, sealed like the first"
                    await platform.run_command(step, ctx, request, RequestStatus.COMPLETED, done)
        except IntegrityError:
            # Another job recorded a step first (its claim was lost with its connection): it goes on.
            log.warning("GDPR request %s: a step was recorded by another job; this one stops", request.id)
        except DEPENDENCY_AWAY as away:
            # A dependency away (Kafka, PostgreSQL, Redis) is no reason to fail a person's request for
            # good: recorded `failed`, it was never run again, and the tenant had to ask anew. Left
            # unfinished, the resumer runs it again (every minute) once the dependency is back.
            log.warning(
                "GDPR request %s stopped, a dependency is unreachable (%s); it is resumed when it is back", request.id, away
            )
        except Exception as failure:
            # The reason names the failure's kind only: its text could quote personal data.
            log.exception("GDPR request %s failed", request.id)
            try:
                await platform.run_command(step, ctx, request, RequestStatus.FAILED, f"failed: {type(failure).__name__}")
            except Exception:
                log.exception("GDPR request %s: could not record its failure", request.id)

    async def _erase(self, ctx: CommandContext, request: GdprRequest, resumed: bool) -> None:
        platform = self.platform
        key_id = await asyncio.to_thread(platform.personal.erase, request.tenant_id, request.subject)

        def purge() -> int:
            with platform.db.transaction() as tx:
                return gdpr_store.forget_exports(tx, request.tenant_id, request.subject)

        exports = await asyncio.to_thread(purge)
        if key_id is None:
            done = f"nothing to erase: no live data key (erased before, or never seen); {exports} exports deleted"
        else:
            done = f"data key {key_id} erased; {exports} exports deleted"
        # Resumed, `SubjectErased` is recorded even with no key left: the stopped process may have
        # deleted it without recording that, and every process must forget the key it keeps in memory.
        erased = key_id is not None or resumed
        record = functools.partial(platform.control.advance_gdpr_request, erased_key=key_id, erased=erased)
        await platform.run_command(record, ctx, request, RequestStatus.COMPLETED, done)

    async def _export(self, request: GdprRequest) -> int:
        """Build and keep the export, after the tenant's exports before it; how many events it holds."""
        # Kept once made (a lock per tenant that ever exported): one dropped while a waiter was
        # being woken would let a third export start beside the second.
        async with self._exporting.setdefault(request.tenant_id, asyncio.Lock()):
            return await self._export_now(request)

    async def _export_now(self, request: GdprRequest) -> int:
        """The export's work: the records read and decoded, and the document written and sealed, in
        threads (they held the event loop, and every request with it, for the partition's size)."""
        platform = self.platform
        tenant_id, subject = request.tenant_id, request.subject
        events: list[dict[str, Any]] = []
        topic = platform.topics.usage
        ends = await platform.log.end_offsets(topic)
        about: list[Any] = []
        own = partition_for(tenant_id, len(ends))  # the usage topic is keyed by tenant: one partition holds its events
        for partition, end in sorted(ends.items()):
            if partition != own:
                continue
            offset = 0
            while offset < end:
                records = await platform.log.read(topic, partition, offset, min(READ_PAGE, end - offset))
                if not records:
                    break
                offset = records[-1].offset + 1
                about += await asyncio.to_thread(_about, records, tenant_id, subject)
        keys = await asyncio.to_thread(platform.personal.keys_for, tenant_id, [subject], create=False)
        pseudonyms: dict[str, Any] = {}  # what the person's values are sealed as -> the values

        def opened() -> None:
            for event in about:
                events.append(
                    {
                        "id": event.source_id,
                        "source": event.source,
                        "type": event.type,
                        "subject": event.subject,
                        "time": format_time(event.event_time),
                        "recorded": format_time(event.recorded_time),
                        "data": platform.personal.opened(event, keys, pseudonyms),
                    }
                )

        await asyncio.to_thread(opened)

        def views() -> dict[str, Any]:
            with platform.db.transaction() as tx:
                rows = gdpr_store.meter_rows_naming(tx, tenant_id, subject, pseudonyms)
                found = {
                    "meters": [shown for row in rows if (shown := row_about_person(row, subject, pseudonyms)) is not None],
                    "gdpr_requests": gdpr_store.requests_of_subject(tx, tenant_id, subject),
                }
                actor = subject.removeprefix(ACTOR_PREFIX) if subject.startswith(ACTOR_PREFIX) else None
                entries = [] if actor is None else _audit_entries_of(tx, tenant_id, actor)
            if actor is not None:  # an API key as the data subject: the audit entries of its commands, opened
                opened = platform.personal.open_actors(tenant_id, [e["actor"] for e in entries])
                found["audit"] = [e | {"opened_actor": o} for e, o in zip(entries, opened, strict=True)]
            return found

        document = {
            "request": str(request.id),
            "tenant_id": tenant_id,
            "subject": subject,
            "generated_at": format_time(datetime.now(UTC)),
            "events": events,
            "views": await asyncio.to_thread(views),
        }

        def keep() -> None:
            text = orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()
            key = keys.get(subject)
            if key is not None:  # kept sealed under the person's key: erasing it erases every copy's meaning
                text = key.seal_document(text.encode(), document_associated_data(tenant_id, subject, str(request.id)))
            with platform.db.transaction() as tx:
                gdpr_store.put_export(tx, str(request.id), tenant_id, subject, text)

        await asyncio.to_thread(keep)
        return len(events)


def _about(records: list[Any], tenant_id: str, subject: str) -> list[Any]:
    """The records' events about the person (in a thread: decoding a partition is most of an export)."""
    found = []
    for record in records:
        try:
            event = decode(record.value)
        except (NewerSchema, ValueError, KeyError, TypeError):
            continue
        # The event's person: the one its data class names in its data, else its subject (as
        # sealing decided). An event naming another person under a subject equal to this one's is
        # about that person, not this one.
        if event.tenant_id == tenant_id and (event.data_subject_id or event.subject) == subject:
            found.append(event)
    return found
