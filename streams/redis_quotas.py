"""The quota ledger of Kafka mode: hot counters in Redis, a cache of the log rebuilt when lost.

Counters hold, per (tenant, additive meter, period), what the log holds for it, in milli-units
(Lua numbers are doubles: exact below 2^53, about 9 * 10^12 units). Their keys name an epoch, the
value of `built`: a rebuild fills a new epoch's keys, then points `built` at it.

Consume, for one (tenant, idempotency key):

1. one Lua script (CONSUME): the answer kept under the key, if any; else the decision against
   the counter of the quota's period, the counters of the consume's day and month raised if
   accepted, and a *pending* answer kept for PENDING_MS;
2. the usage event (or the refusal) appended to Kafka with acks=all; then the consume is answered;
3. the pending answer becomes the kept one, in the next CONSUME call (which keeps the answers
   handed to it before it decides anything); if the append failed, UNDO takes the amount back (in
   the same epoch only) and drops the pending answer: 503, nothing counted.

Steps 1 and 3 share group calls (streams.group_call): the consumes that reach step 1, and the
answers to keep, while a call is under way go together in the next one, each consume still decided
in turn as if alone, and each still answered only once its own append is acknowledged. Under load
that is one round trip to Redis for many consumes instead of two per consume, and no round trip
between the append and the answer. With `group_spacing` (`OMNI_CONSUME_GROUP_SPACING_MS`, off by
default) calls also start at least that far apart, so at a steady rate too each carries several
consumes, whose appends then leave in one produce request: less CPU, a longer wait. A retry sent to this process after its answer finds the answer
kept (its call comes after, or is, the one that keeps it); one sent to another API process within
that round trip finds it pending (409, in progress, as for any retry of a consume under way).

A process that dies between 1 and 3 (even after answering) leaves its amount counted and its answer pending until
PENDING_MS: the counter is then above the log (refusing early, never overshooting) until the next
rebuild; a retry after that decides again, and the event's id (the idempotency key) keeps the
meters from counting it twice if both appends landed.

Facts (POST /v1/events) are counted by the worker as it folds them (ADD_FACTS, before the views
commit), against a mark per partition: the offsets the counters hold. A batch folded again after
a failed commit finds the mark past it and counts nothing. A batch that starts past the mark
(folded while Redis was away) means facts were folded without being counted: the script drops
`built`, and the next consume rebuilds.

Rebuilding (Redis lost its data, a cold start, or the above): under a lock, after a grace of the
produce timeout (appends that were in flight land or fail), from the views (each tenant's totals
this day and this month, at the views' checkpoints) plus the log past those checkpoints up to its
end, de-duplicated as the fold does. Until `built` points at the new epoch, consume waits (then
answers 503), and the worker's batches wait too, so nothing folded meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from omni import failpoints, metrics
from projections.meter_state import EXACT
from projections.meters import MeterIndex
from projections.quotas import CounterKey, Decision, PeriodKey, periods_around, periods_of, usage_deltas
from schemas.envelope import Envelope, NewerSchema, decode, encode, record_headers
from schemas.meters import Aggregation, MeterDefinition
from schemas.plans import Enforcement
from schemas.topics import Topics
from stores import quotas as quota_views
from stores import views
from stores.database import Database, StoreUnavailable
from streams.group_call import GroupCall
from streams.log import CountersUnavailable, EventLog, LogRecord, LogUnavailable, Outgoing
from streams.quota_ledger import (
    CaughtUpCounter,
    ConsumeOutcome,
    ConsumeRequest,
    Rebuilding,
    caught_up_mark,
    consumed_from_mark,
    tail_from_mark,
)
from streams.redis_pipe import RedisPipe
from streams.redis_wire import redis_client

log = logging.getLogger(__name__)

MILLI = Decimal(1000)
# What the counters count: "2" since meters' catch-ups count into them (a meter defined after its
# events). Counters built by an older version are built again once, at the API's start: that also
# counts the history of meters defined after their events, which older versions left out.
FORMAT = "2"
PENDING_MS = 30_000
LOCK_MS = 15_000  # renewed while a rebuild runs: a process that died rebuilding holds it no longer than this
WAIT_FOR_BUILD_SECONDS = 10.0
READ_CHUNK = 5000
BUILT_MARK = "quota-counters-built"  # in the views: counters were installed once (a rebuild then waits its grace)
# In an epoch's marks: the generation of the meters' views it was built from (stores.views.meters_generation).
GENERATION_FIELD = "generation"


def milli(amount: Decimal) -> int:
    """An amount in milli-units, rounded half to even: a consume's amount and a limit are whole
    milli-units; a batch of facts finer than that is rounded, by under half a milli-unit either way.
    (Rounded up instead, the errors of every batch added up, all one way: a counter of fine-grained
    costs grew by up to a milli-unit a batch until the next rebuild, refusing more and more early.)"""
    return int(EXACT.multiply(amount, MILLI).to_integral_value(rounding=ROUND_HALF_EVEN))


# A counter saturates at this many milli-units either way (about 9 x 10^12 units, past any limit:
# limits are below 10^12): every integer up to it is exact as a Lua number, and a fact far past it
# (admission takes values up to 10^38) neither overflows Redis's 64-bit integers, failing the
# fold's count and every rebuild after it (so every tenant's consume), nor rounds a sum near it.
SATURATION = 2**53


def saturated(value: int) -> int:
    return max(-SATURATION, min(SATURATION, value))


def from_milli(value: int | str | bytes) -> Decimal:
    number = Decimal(value.decode() if isinstance(value, bytes) else str(value)) / MILLI
    return number.quantize(Decimal(1)) if number == number.to_integral_value() else number.normalize()


# One call for the answers to keep (those whose appends landed) and a group of consumes to decide
# (streams.group_call: those that arrive while a call is under way share the next one). The
# answers are kept first, each only if it is still ours (still that pending value); then each
# consume is decided in turn exactly as if alone. A refusal kept for a period that has ended is
# no answer to a retry in the next one (streams.quota_ledger.QuotaLedger.consume).
# KEYS: built, the n answers to keep, then each consume's answer key. ARGV: prefix, pending TTL
# (ms), kept TTL (ms), n, then per answer to keep: its pending value, its kept value; then per
# consume: tenant, fingerprint, amount, limit ('' for none), hard ('1'), field of the quota's
# period, field of the day, field of the month, the period.
# Answers, per consume: {'rebuild'} | {'kept', answer} | {'decided', accepted, used, epoch, pending value}.
CONSUME = """
local n = tonumber(ARGV[4])
for i = 1, n do
  if redis.call('GET', KEYS[1 + i]) == ARGV[3 + 2 * i] then redis.call('SET', KEYS[1 + i], ARGV[4 + 2 * i], 'PX', ARGV[3]) end
end
local epoch = redis.call('GET', KEYS[1])
local out = {}
for i = 2 + n, #KEYS do
  local a = 5 + 2 * n + (i - 2 - n) * 9
  if not epoch then
    out[#out + 1] = {'rebuild'}
  else
    local kept = redis.call('GET', KEYS[i])
    if kept then
      local state, accepted_then, period_then = string.match(kept, '^(%a+)|[^|]*|[^|]*|([01])|[^|]*|([^|]*)')
      if state == 'done' and accepted_then == '0' and period_then ~= ARGV[a + 8] then kept = false end
    end
    if kept then
      out[#out + 1] = {'kept', kept}
    else
      local counters = ARGV[1] .. 'c:' .. epoch .. ':' .. ARGV[a]
      local used = tonumber(redis.call('HGET', counters, ARGV[a + 5]) or '0')
      local amount = tonumber(ARGV[a + 2])
      local accepted = '1'
      if ARGV[a + 3] ~= '' and ARGV[a + 4] == '1' and used + amount > tonumber(ARGV[a + 3]) then accepted = '0' end
      if accepted == '1' then
        redis.call('HINCRBY', counters, ARGV[a + 6], ARGV[a + 2])
        if ARGV[a + 7] ~= ARGV[a + 6] then redis.call('HINCRBY', counters, ARGV[a + 7], ARGV[a + 2]) end
        used = used + amount
      end
      local value = 'pending|' .. epoch .. '|' .. ARGV[a + 1] .. '|' .. accepted .. '|' .. string.format('%.0f', used) .. '|' .. ARGV[a + 8]
      redis.call('SET', KEYS[i], value, 'PX', ARGV[2])
      out[#out + 1] = {'decided', accepted, string.format('%.0f', used), epoch, value}
    end
  end
end
return out
"""

# KEYS: built, answer. ARGV: prefix, tenant, pending value, epoch, accepted, amount, day field,
# month field. Takes the amount back if the counters are still that epoch's.
UNDO = """
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
if ARGV[5] == '1' and redis.call('GET', KEYS[1]) == ARGV[4] then
  local counters = ARGV[1] .. 'c:' .. ARGV[4] .. ':' .. ARGV[2]
  redis.call('HINCRBY', counters, ARGV[7], -tonumber(ARGV[6]))
  if ARGV[8] ~= ARGV[7] then redis.call('HINCRBY', counters, ARGV[8], -tonumber(ARGV[6])) end
end
return 1
"""


# The start of the scripts that count folded records (ADD_FACTS, CATCH_UP): the current epoch, or
# {'wait'} while a rebuild is filling a new one, {'skip'} when there are no counters; and the mark
# (in ARGV[2]) checked against the batch's first offset (ARGV[3 + shift]): past it, records were
# folded uncounted, so the counters are dropped for a rebuild ({'reset'}). So are counters built
# from views of another generation than the fold's (ARGV[generation]; a replay swapped the views).
def _counting_from_mark(shift: int, generation: int) -> str:
    return f"""
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {{'wait'}} end
  return {{'skip'}}
end
local marks = ARGV[1] .. 'm:' .. epoch
local mark = tonumber(redis.call('HGET', marks, ARGV[2]) or '0')
local built_from = redis.call('HGET', marks, '{GENERATION_FIELD}') or '0'
if mark < tonumber(ARGV[{3 + shift}]) or built_from ~= ARGV[{generation}] then
  redis.call('DEL', KEYS[1])
  return {{'reset'}}
end
"""


# The end of those scripts: the (tenant, field, amount) triples from ARGV[first] on added, each
# counter saturating at SATURATION either way, and the mark moved to the batch's end (ARGV[last]).
def _counted(first: int, end: int) -> str:
    return f"""
for i = {first}, #ARGV, 3 do
  local counters = ARGV[1] .. 'c:' .. epoch .. ':' .. ARGV[i]
  local now = tonumber(redis.call('HGET', counters, ARGV[i + 1]) or '0') + tonumber(ARGV[i + 2])
  if now > 9007199254740992 then now = 9007199254740992 elseif now < -9007199254740992 then now = -9007199254740992 end
  redis.call('HSET', counters, ARGV[i + 1], string.format('%.0f', now))
end
redis.call('HSET', marks, ARGV[2], ARGV[{end}])
return {{'ok'}}
"""


# KEYS: built, lock. ARGV: prefix, mark field (topic/partition), the batch's first offset, the
# mark the caller counted from, the batch's end, the views' generation, then (tenant, field, amount)
# triples. Answers {'skip'} (no counters, or a rebuild is filling them: count nothing, or 'wait'),
# {'moved', mark} (count again from there), {'reset'} (facts were folded uncounted, or the views
# were swapped), {'ok'}.
ADD_FACTS = (
    _counting_from_mark(0, 6)
    + """
if mark ~= tonumber(ARGV[4]) then return {'moved', string.format('%.0f', mark)} end
if mark >= tonumber(ARGV[5]) then return {'ok'} end
"""
    + _counted(7, 5)
)

# KEYS: built, lock. ARGV: prefix, the meter's catch-up mark field, its tail-from field, its
# consumed-from field, the batch's first offset, the mark the caller counted from, the tail-from and
# consumed-from it assumed, the batch's end, the views' generation, then (tenant, field, amount)
# triples. As ADD_FACTS, against a mark of one meter's own (streams.quota_ledger.caught_up_mark);
# {'moved', mark, tail_from, consumed_from}: count again with those.
CATCH_UP = (
    _counting_from_mark(2, 10)
    + """
local tail = redis.call('HGET', marks, ARGV[3]) or '0'
local consumed = redis.call('HGET', marks, ARGV[4]) or '0'
if mark ~= tonumber(ARGV[6]) or tail ~= ARGV[7] or consumed ~= ARGV[8] then
  return {'moved', string.format('%.0f', mark), tail, consumed}
end
if mark >= tonumber(ARGV[9]) then return {'ok'} end
"""
    + _counted(11, 9)
)

# KEYS: lock. ARGV: token, TTL (ms). Extends the lock if it is still ours.
EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lock, built. ARGV: token, epoch. Points `built` at the filled epoch if the lock is still ours.
INSTALL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""


def field(meter: str, period: PeriodKey) -> str:
    return f"{meter}|{period.text}"


class QuotaKeys:
    def __init__(self, topics: Topics) -> None:
        self.prefix = f"omni:quota:{topics.prefix}:"
        self.built = self.prefix + "built"
        self.format = self.prefix + "format"  # FORMAT, once counters of it are built
        self.lock = self.prefix + "building"

    def answer(self, tenant_id: str, idempotency_key: str) -> str:
        return self.prefix + "a:" + tenant_id + ":" + hashlib.sha256(idempotency_key.encode()).hexdigest()

    def counters(self, epoch: str, tenant_id: str) -> str:
        return self.prefix + "c:" + epoch + ":" + tenant_id

    def marks(self, epoch: str) -> str:
        return self.prefix + "m:" + epoch


@dataclass(frozen=True, slots=True)
class Decide:
    """A consume to decide: its answer's key and its arguments to CONSUME."""

    answer_key: str
    args: list[object]


@dataclass(frozen=True, slots=True)
class Keep:
    """An answer to keep: its key, the pending value it must still hold, the value kept from now on."""

    answer_key: str
    pending: str
    kept: str


def _not_kept(failure: BaseException) -> None:
    log.warning("could not keep a consume's answer (%s); a retry may decide again (the meters count it once)", failure)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisQuotaLedger:
    """The API's side: consume, reads and rebuilds (asyncio)."""

    def __init__(
        self,
        url: str,
        topics: Topics,
        log_: EventLog,
        views_db: Database,
        *,
        grace: float,
        keep_seconds: int,
        group_spacing: float = 0.0,
    ) -> None:
        self.redis: aioredis.Redis = redis_client(url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=30)
        self.topics = topics
        self.keys = QuotaKeys(topics)
        self.log = log_
        self.views_db = views_db
        self.grace = grace  # how long an append may still be in flight (the produce timeout)
        self.keep_ms = keep_seconds * 1000
        self._pipe = RedisPipe(url, connect_timeout=2.0, reply_timeout=5.0)  # CONSUME's calls, in order
        self._consume_sha = hashlib.sha1(CONSUME.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        # Calls at least `group_spacing` seconds apart: at a steady rate, groups of several consumes.
        self._calls: GroupCall[Decide | Keep, list[object] | None] = GroupCall(self._call_group, spacing=group_spacing)
        self._undo = self.redis.register_script(UNDO)
        self._install = self.redis.register_script(INSTALL)
        self._extend = self.redis.register_script(EXTEND)
        self._rebuilding: asyncio.Task[bool] | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def close(self) -> None:
        for task in (self._rebuilding, self._keeper):
            if task is not None:
                task.cancel()
        await self._calls.drain(timeout=2.0)  # the answers still to keep
        self._calls.close()
        await self._pipe.close()
        await self.redis.aclose()

    async def start(self) -> None:
        """Rebuild now if the counters are missing, so the first consume need not wait; if another
        process holds the rebuild's lock (or died holding it), try again until they are built."""
        self._keeper = asyncio.create_task(self._keep_built(), name="quota-counters")

    async def _keep_built(self) -> None:
        while True:
            try:
                epoch = await self.redis.get(self.keys.built)
                if epoch is not None:
                    if _text(await self.redis.get(self.keys.format) or b"") != FORMAT:
                        log.info("quota counters of an older version (format %s wanted): building them again", FORMAT)
                        await self.redis.delete(self.keys.built)
                    elif not await self._built_from_current_views(_text(epoch)):
                        log.info("quota counters built from views a replay swapped out since: building them again")
                        await self.redis.delete(self.keys.built)
                    else:
                        return
                self._start_rebuild()
                assert self._rebuilding is not None
                await asyncio.shield(self._rebuilding)
            except (RedisError, StoreUnavailable) as away:
                log.warning("quota counters: Redis or the views unreachable (%s); trying again", away)
            await asyncio.sleep(1.0)

    async def _built_from_current_views(self, epoch: str) -> bool:
        """Whether the epoch's counters were built from the meters' views as they are now (no replay
        has swapped them since: stores.views.meters_generation)."""
        built_from = int(_text(await self.redis.hget(self.keys.marks(epoch), GENERATION_FIELD) or b"0"))
        return built_from == await asyncio.to_thread(self._views_generation)

    def _views_generation(self) -> int:
        with self.views_db.transaction() as tx:
            return views.meters_generation(tx)

    async def views_swapped(self) -> None:
        """A replay swapped the meters' views in: the counters are built again from them now (the
        fold's next batch would find it too; this spares consumes the wait for one)."""
        await self.redis.delete(self.keys.built)
        self._start_rebuild()

    # Consume ------------------------------------------------------------------------------------

    async def consume(self, request: ConsumeRequest) -> ConsumeOutcome:
        event, value = request.usage
        tenant_id, meter, amount = request.tenant_id, request.meter, request.amount
        limit = request.entitlement.limit if request.entitlement is not None else None
        hard = request.entitlement is not None and request.entitlement.enforcement is Enforcement.HARD
        day, month = periods_of(event.event_time)
        answer_key = self.keys.answer(tenant_id, request.idempotency_key)
        digest = hashlib.sha256(request.fingerprint().encode()).hexdigest()
        args: list[object] = [
            tenant_id,
            digest,
            milli(amount),
            "" if limit is None else milli(limit),
            "1" if hard else "0",
            field(meter, request.period),
            field(meter, day),
            field(meter, month),
            request.period.text,
        ]
        deadline = time.monotonic() + WAIT_FOR_BUILD_SECONDS
        while True:
            try:
                reply = await self._calls(Decide(answer_key, args))
            except RedisError as away:
                raise CountersUnavailable(f"the quota counters (Redis) are unreachable: {away}") from away
            assert reply is not None
            kind = _text(reply[0])
            if kind != "rebuild":
                break
            self._start_rebuild()
            if time.monotonic() > deadline:
                raise CountersUnavailable("the quota counters are being rebuilt; retry shortly")
            await asyncio.sleep(0.05)
        if kind == "kept":
            return _kept(_text(reply[1]), digest)
        accepted, used, epoch, pending = _text(reply[1]) == "1", int(_text(reply[2])), _text(reply[3]), _text(reply[4])
        record, wire = (event, value) if accepted else (request.refusal, encode(request.refusal))
        failpoints.hit(failpoints.QUOTA_BEFORE_APPEND)
        try:
            await self.log.append(self.topics.usage, [Outgoing(tenant_id, wire, record_headers(record))])
        except BaseException:
            undo = [self.keys.prefix, tenant_id, pending, epoch, "1" if accepted else "0", milli(amount)]
            try:
                await self._undo(keys=[self.keys.built, answer_key], args=[*undo, field(meter, day), field(meter, month)])
            except RedisError:
                log.warning("could not take back an unrecorded consume; the counter is over until the next rebuild")
            raise
        failpoints.hit(failpoints.QUOTA_AFTER_APPEND)
        kept = pending.replace("pending|", "done|", 1) + "|" + ("" if limit is None else str(milli(limit)))
        self._calls.post(Keep(answer_key, pending, kept), on_failure=_not_kept)
        return ConsumeOutcome(_decision(accepted, from_milli(used), limit), request.period, replayed=False)

    async def kept(self, tenant_id: str, idempotency_key: str, fingerprint: str, now: datetime) -> ConsumeOutcome | None:
        try:
            kept = await self.redis.get(self.keys.answer(tenant_id, idempotency_key))
        except RedisError as away:
            raise CountersUnavailable(f"the quota counters (Redis) are unreachable: {away}") from away
        if kept is None:
            return None
        return _kept(_text(kept), hashlib.sha256(fingerprint.encode()).hexdigest())

    async def _call_group(self, group: list[Decide | Keep]) -> list[list[object] | None]:
        """CONSUME for a group of answers to keep and consumes to decide: one round trip for all."""
        keeps = [item for item in group if isinstance(item, Keep)]
        decides = [item for item in group if isinstance(item, Decide)]
        keys = [self.keys.built, *(k.answer_key for k in keeps), *(d.answer_key for d in decides)]
        args: list[object] = [self.keys.prefix, PENDING_MS, self.keep_ms, len(keeps)]
        for keep in keeps:
            args += [keep.pending, keep.kept]
        for decide in decides:
            args += decide.args
        replies = iter(await self._pipe.evalsha(self._consume_sha, CONSUME, keys, args))
        return [next(replies) if isinstance(item, Decide) else None for item in group]

    # Reads --------------------------------------------------------------------------------------

    async def used(self, tenant_id: str, meter: str, period: PeriodKey) -> Decimal | None:
        """The counter, or None when there are none (Redis away or lost) or it saturated (it holds the
        bound, not the sum): read the views then."""
        try:
            epoch = await self.redis.get(self.keys.built)
            if epoch is None:
                return None
            value = await self.redis.hget(self.keys.counters(_text(epoch), tenant_id), field(meter, period))
        except RedisError:
            return None
        counted = int(_text(value or b"0"))
        return None if abs(counted) >= SATURATION else from_milli(counted)

    # Rebuild ------------------------------------------------------------------------------------

    def _start_rebuild(self) -> None:
        if self._rebuilding is None or self._rebuilding.done():
            self._rebuilding = asyncio.create_task(self.rebuild(), name="quota-rebuild")

    async def rebuild(self, now: datetime | None = None) -> bool:
        """Fill a new epoch from the views and the log; True if this process did it."""
        token = secrets.token_hex(8)
        try:
            if not await self.redis.set(self.keys.lock, token, nx=True, px=LOCK_MS):
                return False  # another process is at it
            await self.redis.delete(self.keys.built)  # consumes and the worker wait from here
            renewing = asyncio.create_task(self._renew(token), name="quota-rebuild-lock")
            try:
                # Counters never built before (a new deployment) had no consume in flight to wait for.
                if await asyncio.to_thread(self._built_before):
                    await asyncio.sleep(self.grace)
                epoch = secrets.token_hex(6)
                moment = now or datetime.now(UTC)
                counters, marks = await self._from_views_and_log(moment)
                if marks[GENERATION_FIELD] != await asyncio.to_thread(self._views_generation):
                    counters, marks = await self._from_views_and_log(moment)  # a replay swapped the views meanwhile
            finally:
                renewing.cancel()
            pipe = self.redis.pipeline(transaction=False)
            for (tenant_id, meter, period), amount in counters.items():
                pipe.hset(self.keys.counters(epoch, tenant_id), f"{meter}|{period}", saturated(milli(amount)))
            for mark_field, end in marks.items():
                pipe.hset(self.keys.marks(epoch), mark_field, end)
            pipe.set(self.keys.format, FORMAT)
            await pipe.execute()
            installed = bool(await self._install(keys=[self.keys.lock, self.keys.built], args=[token, epoch]))
            if installed:
                metrics.QUOTA_REBUILDS.inc()
                await asyncio.to_thread(self._remember_built)
            log.info(
                "quota counters rebuilt (epoch %s, %d counters): %s",
                epoch,
                len(counters),
                "installed" if installed else "lost the lock",
            )
            return installed
        except (RedisError, LogUnavailable) as failure:
            log.warning("rebuilding the quota counters failed (%s); the next consume tries again", failure)
            try:
                if _text(await self.redis.get(self.keys.lock) or b"") == token:
                    await self.redis.delete(self.keys.lock)
            except RedisError:
                pass
            return False

    def _built_before(self) -> bool:
        with self.views_db.transaction() as tx:
            return views.relay_position(tx, BUILT_MARK) > 0

    def _remember_built(self) -> None:
        with self.views_db.transaction() as tx:
            views.set_relay_position(tx, BUILT_MARK, 1)

    async def _renew(self, token: str) -> None:
        """Keep the rebuild's lock while it runs (it lapses LOCK_MS after its process dies)."""
        while True:
            await asyncio.sleep(LOCK_MS / 3000)
            if not await self._extend(keys=[self.keys.lock], args=[token, LOCK_MS]):
                return

    async def _from_views_and_log(self, now: datetime) -> tuple[dict[CounterKey, Decimal], dict[str, int]]:
        from streams.projectors import API_CALLS, METERS

        periods = periods_around(now)
        sources = {self.topics.usage: METERS, self.topics.api_calls: API_CALLS}
        ends = {topic: await self.log.end_offsets(topic) for topic in sources}

        def read_views() -> tuple[dict[str, dict[int, int]], list[MeterDefinition], dict[CounterKey, Decimal], Behind, int]:
            with self.views_db.transaction() as tx:
                generation = views.meters_generation(tx)
                held = {topic: views.checkpoints(tx, consumer, topic) for topic, consumer in sources.items()}
                definitions = [d for d in views.meter_definitions(tx) if d.aggregation in (Aggregation.SUM, Aggregation.COUNT)]
                behind = {topic: views.meters_behind(tx, topic, held[topic]) for topic in sources}
                return held, definitions, quota_views.current_totals(tx, definitions, now), behind, generation

        held, definitions, counters, behind, generation = await asyncio.to_thread(read_views)
        meters = MeterIndex(definitions)
        tail: dict[tuple[str, int], list[Envelope]] = {}
        marks: dict[str, int] = {GENERATION_FIELD: generation}
        for topic, partitions in ends.items():
            for partition, end in partitions.items():
                start = held[topic].get(partition, 0)
                marks[f"{topic}/{partition}"] = max(end, start)
                # A meter still catching up here: its views hold its usage below its own offset, this
                # rebuild counts the tail [start, end) for it as for every meter, and its catch-up
                # counts the rest below `start` (consume's records of it too) and facts past `end`.
                for (meter, at), folded in behind[topic].items():
                    if at == partition:
                        marks[caught_up_mark(topic, partition, meter)] = folded
                        marks[tail_from_mark(topic, partition, meter)] = min(start, end)
                        marks[consumed_from_mark(topic, partition, meter)] = end
                found = tail.setdefault((topic, partition), [])
                while start < end:
                    records = await self.log.read(topic, partition, start, min(READ_CHUNK, end - start))
                    if not records:
                        break
                    found.extend(e for e in (_decoded(r) for r in records if r.offset < end) if e is not None)
                    start = records[-1].offset + 1
        fresh = {id(e) for e in await asyncio.to_thread(self._not_folded, [e for events in tail.values() for e in events])}
        current = {period.text for period in periods}
        for events in tail.values():
            for key, amount in usage_deltas(meters, [e for e in events if id(e) in fresh], facts_only=False).items():
                if key[2] in current:
                    counters[key] = EXACT.add(counters.get(key, Decimal(0)), amount)
        return counters, marks

    def _not_folded(self, events: Sequence[Envelope]) -> list[Envelope]:
        """The tail's events, each (tenant, source, id) once, less those the views folded already."""
        first: dict[tuple[str, str, str], Envelope] = {}
        for event in events:
            first.setdefault(event.dedupe_key, event)
        with self.views_db.transaction() as tx:
            seen = views.already_seen(tx, list(first))
        return [event for key, event in first.items() if key not in seen]


Behind = dict[str, dict[tuple[str, int], int]]  # per topic: views.meters_behind


def _decoded(record: LogRecord) -> Envelope | None:
    try:
        return decode(record.value)
    except NewerSchema:
        raise
    except (ValueError, KeyError, TypeError):
        return None  # dead-lettered by the fold too


def _decision(accepted: bool, used: Decimal, limit: Decimal | None) -> Decision:
    remaining = None if limit is None else max(limit - used, Decimal(0))
    return Decision(accepted, used, limit, remaining)


def _kept(kept: str, digest: str) -> ConsumeOutcome:
    """The answer kept under an idempotency key: `state|epoch|fingerprint|accepted|used|period[|limit]`."""
    parts = kept.split("|")
    state, _epoch, fingerprint, accepted, used, period = parts[:6]
    if fingerprint != digest:
        return ConsumeOutcome(_decision(False, Decimal(0), None), PeriodKey.parse(period), replayed=True, conflict=True)
    if state == "pending":
        return ConsumeOutcome(_decision(False, Decimal(0), None), PeriodKey.parse(period), replayed=True, in_progress=True)
    limit = from_milli(parts[6]) if len(parts) > 6 and parts[6] else None
    return ConsumeOutcome(_decision(accepted == "1", from_milli(used), limit), PeriodKey.parse(period), replayed=True)


async def views_swapped_elsewhere(url: str, topics: Topics) -> None:
    """RedisQuotaLedger.views_swapped from another process (`omni replay --swap`): the counters'
    `built` mark dropped, so the API's next consume builds them again."""
    client = redis_client(url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        await client.delete(QuotaKeys(topics).built)
    finally:
        await client.aclose()


class RedisFactLedger:
    """The worker's side: facts counted as the meters fold them (blocking; the projectors run in threads)."""

    def __init__(self, url: str, topics: Topics) -> None:
        # Bounded: a Redis that stops answering must not hold up the fold (its batch goes on uncounted).
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
        metrics.POOLS.watch_redis(self.redis.connection_pool)
        self.keys = QuotaKeys(topics)
        self._add = self.redis.register_script(ADD_FACTS)
        self._catch_up = self.redis.register_script(CATCH_UP)

    def add_facts(
        self,
        topic: str,
        partition: int,
        start: int,
        end: int,
        counted: Callable[[int], Mapping[CounterKey, Decimal]],
        generation: int,
    ) -> None:
        """One script call in the common case: the batch counted whole, from its first offset."""
        mark_field = f"{topic}/{partition}"
        counted_from = start
        try:
            for _ in range(10):
                args: list[object] = [self.keys.prefix, mark_field, start, counted_from, end, generation]
                for (tenant_id, meter, period), amount in counted(counted_from).items():
                    args += [tenant_id, f"{meter}|{period}", saturated(milli(amount))]
                reply = self._add(keys=[self.keys.built, self.keys.lock], args=args)
                kind = _text(reply[0])
                if kind == "moved":
                    counted_from = max(int(_text(reply[1])), start)
                    continue
                if kind == "wait":
                    raise Rebuilding("the quota counters are being rebuilt")
                if kind == "reset":
                    log.warning(
                        "%s: facts were folded uncounted, or the meters' views were swapped; the quota counters will be rebuilt",
                        mark_field,
                    )
                return  # 'ok', or 'skip': no counters to keep (the next rebuild counts this batch from the log)
        except RedisError as away:
            # The views go on; the counters miss this batch, which the next batch's check finds
            # (its first offset past the mark), dropping them for a rebuild.
            log.warning("quota counters unreachable (%s); %s folded without counting its facts", away, mark_field)

    def add_caught_up(
        self,
        meter: str,
        topic: str,
        partition: int,
        start: int,
        end: int,
        counted: CaughtUpCounter,
        generation: int,
    ) -> None:
        """As add_facts, for one meter's catch-up, against that meter's own mark."""
        mark_field = caught_up_mark(topic, partition, meter)
        tail_field, consumed_field = tail_from_mark(topic, partition, meter), consumed_from_mark(topic, partition, meter)
        counted_from, tail_from, consumed_from = start, 0, 0
        try:
            for _ in range(10):
                args: list[object] = [self.keys.prefix, mark_field, tail_field, consumed_field, start, counted_from]
                args += [tail_from, consumed_from, end, generation]
                for (tenant_id, slug, period), amount in counted(counted_from, tail_from, consumed_from).items():
                    args += [tenant_id, f"{slug}|{period}", saturated(milli(amount))]
                reply = self._catch_up(keys=[self.keys.built, self.keys.lock], args=args)
                kind = _text(reply[0])
                if kind == "moved":
                    counted_from = max(int(_text(reply[1])), start)
                    tail_from, consumed_from = int(_text(reply[2])), int(_text(reply[3]))
                    continue
                if kind == "wait":
                    raise Rebuilding("the quota counters are being rebuilt")
                if kind == "reset":
                    log.warning("%s: a catch-up was folded uncounted; the quota counters will be rebuilt", mark_field)
                return
        except RedisError as away:
            log.warning("quota counters unreachable (%s); %s caught up without counting", away, mark_field)
