"""The usage sink for Kafka mode: Redis claims in front of the Kafka log.

Kafka cannot check "seen before?" and append in one step the way the embedded
log's SQLite transaction does, so each event's identity is claimed in Redis
first. Per event, the key `omni:seen:{tenant}:{sha256(source NUL id)}`; per
request (per round of claims, should it wait for another's), a token and its
marker `omni:claim:{token}`:

- one Lua script (CLAIM) does `SET key pending:<token> NX PXAT keep_until` for
  every key of the batch (keep_until: the batch's latest, so each key outlives
  its own event's admissibility; or `keep_for` from now, when that is sooner,
  to bound Redis's memory), sets the marker to `pending` for claim_ttl
  once it has won a key, and answers, for each key it did not win, whether it
  is a duplicate or pending;
- the winners are appended in one `log.append`; then the marker alone is set
  to `done` until keep_until. The keys need no second write: a key is `done`
  when its request's marker is;
- if the append fails, our claims are deleted (only where they still hold our
  token) with our marker, and the request fails with LogUnavailable: nothing
  is claimed as accepted that is not on the log;
- a key whose request's marker is `done` (or whose value is `done`, as earlier
  versions wrote) is a duplicate; one whose marker is `pending` is claimed
  again every POLL_SECONDS until it is done (a duplicate) or given back (this
  claim wins it); one whose marker has expired belongs to a request that died
  between claim and append, and is taken over at once.

So a batch costs two Redis round trips, whatever its size, and writes each key
once. The counts in the response are right because of this; the views are
exact regardless, because MeterProjector also de-duplicates by (tenant,
source, id).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from omni import failpoints
from schemas.envelope import Envelope, encode
from schemas.topics import Topics
from streams.kafka_log import KafkaLog
from streams.log import CountersUnavailable, LogUnavailable, outgoing
from streams.redis_wire import redis_client

log = logging.getLogger(__name__)

DONE = b"done"
PENDING = b"pending:"
MARKER = "omni:claim:"
POLL_SECONDS = 0.02

# KEYS: the keys to claim. ARGV: our value (PENDING + token), our marker's key, the claim's
# TTL in ms, until when the keys are kept (Unix ms), PENDING, MARKER. The marker is set once
# a key is won.
# Answers {position, "done" | "pending", ...} for the keys it did not win (positions are
# 1-based), so nothing at all when every key was new.
CLAIM = """
local lost = {}
local marked = false
for i, key in ipairs(KEYS) do
  local won = redis.call('SET', key, ARGV[1], 'NX', 'PXAT', ARGV[4])
  local state = nil
  if not won then
    local value = redis.call('GET', key)
    state = 'done'
    local pending = ARGV[5]
    if value and string.sub(value, 1, #pending) == pending then
      local marker = redis.call('GET', ARGV[6] .. string.sub(value, #pending + 1))
      if marker == 'pending' then
        state = 'pending'
      elseif not marker then
        -- its request died between claim and append: the key is ours now
        redis.call('SET', key, ARGV[1], 'PXAT', ARGV[4])
        state = nil
        won = true
      end
    end
  end
  if won and not marked then
    redis.call('SET', ARGV[2], 'pending', 'PX', ARGV[3])
    marked = true
  end
  if state then
    lost[#lost + 1] = i
    lost[#lost + 1] = state
  end
end
return lost
"""

# Delete each key only if it still holds our claim (one taken over meanwhile must survive our
# failure), then our marker. KEYS: the keys; ARGV: our value, our marker's key.
RELEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
redis.call('DEL', ARGV[2])
return 0
"""


def seen_key(envelope: Envelope) -> str:
    digest = hashlib.sha256(f"{envelope.source}\x00{envelope.source_id}".encode()).hexdigest()
    return f"omni:seen:{envelope.tenant_id}:{digest}"


class RedisDedupedSink:
    """UsageSink: exactly one acceptance per (tenant, source, id) across all API processes."""

    def __init__(
        self,
        log_: KafkaLog,
        redis_url: str,
        topics: Topics,
        *,
        claim_ttl: float = 30.0,
        wait_timeout: float = 15.0,
        keep_for: float | None = None,
    ) -> None:
        self.log = log_
        self.topics = topics
        # How long Redis keeps an accepted event's key at most (None: until its keep_until, the
        # whole acceptance window). Past it a repeat is accepted again and appended, and the usage
        # projector drops it: never counted twice, only answered `accepted` rather than `duplicate`.
        self.keep_for_ms = None if keep_for is None else int(keep_for * 1000)
        # A claim must outlive the append it protects, or a second request could
        # win the key while the first one's records are still on their way.
        self.claim_ttl_ms = int(max(claim_ttl, log_.produce_timeout + 1.0) * 1000)
        self.wait_timeout = wait_timeout
        self.redis: aioredis.Redis = redis_client(
            redis_url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=30
        )
        # EVALSHA; a server that does not know a script yet (first use, restart) is sent it once.
        self._claim_all = self.redis.register_script(CLAIM)
        self._release = self.redis.register_script(RELEASE)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> None:
        """Raise unless Redis answers (the API's /readyz: no claim, so no ingest or consume, without it)."""
        await self.redis.ping()

    async def ingest(
        self, envelopes: Sequence[Envelope], keep_until: Sequence[datetime], values: Sequence[bytes] | None = None
    ) -> list[bool]:
        """See UsageSink.ingest. `values` (the envelopes' wire forms) are encoded here when not given,
        before anything is claimed: an envelope that cannot be encoded fails its own request only,
        and claims nothing."""
        if len(envelopes) != len(keep_until) or (values is not None and len(values) != len(envelopes)):
            raise ValueError("one keep_until and one value per envelope")
        if values is None:
            values = [encode(envelope) for envelope in envelopes]
        accepted = [False] * len(envelopes)
        waiting = _first_occurrences(envelopes)  # later copies in the same batch stay False
        if not waiting:
            return accepted
        # pragma: no mutate start (the rounds of claims need Redis: tests/integration/test_redis_dedupe.py)
        deadline = time.monotonic() + self.wait_timeout
        keep_until_ms = int(max(keep_until).timestamp() * 1000)
        if self.keep_for_ms is not None:
            keep_until_ms = min(keep_until_ms, int(time.time() * 1000) + self.keep_for_ms)
        while waiting:
            # A token of its own for each round: a round's marker lives from its claim to its
            # append, whatever earlier rounds of this request did.
            claim = Claim.new(keep_until_ms)
            won, pending = await self._claim(waiting, claim)
            if won:
                # Append what we hold before waiting on anyone else: holding claims while waiting
                # for another request's claims could deadlock two requests with crossed batches.
                await self._publish(envelopes, values, won, claim)
                for index in won.values():
                    accepted[index] = True
            waiting = pending
            if waiting:
                if time.monotonic() >= deadline:
                    raise LogUnavailable(
                        f"{len(waiting)} events are being admitted by another request that did not finish "
                        f"within {self.wait_timeout}s"
                    )
                await asyncio.sleep(POLL_SECONDS)
        # pragma: no mutate end
        return accepted

    # Talks to Redis: tested against it (tests/integration/test_redis_dedupe.py), not mutated.
    async def _claim(
        self, waiting: dict[str, int], claim: Claim
    ) -> tuple[dict[str, int], dict[str, int]]:  # pragma: no mutate block
        """Claim every key we can, in one round trip.

        Returns (won, pending), key -> batch index: the keys we now hold, and the keys another
        request holds. The keys that are done are in neither: they are duplicates.
        """
        keys = list(waiting)
        try:
            lost = await self._claim_all(
                keys=keys, args=[claim.value, claim.marker, self.claim_ttl_ms, claim.keep_until_ms, PENDING, MARKER]
            )
        except RedisError as failure:
            raise CountersUnavailable(f"Redis (de-duplication) is unavailable: {failure}") from failure
        if not lost:
            return waiting, {}
        won = dict(waiting)
        pending = {}
        for position, state in zip(lost[::2], lost[1::2], strict=True):
            key = keys[position - 1]
            index = won.pop(key)
            if state != DONE:
                pending[key] = index
        return won, pending

    # Talks to Redis: tested against it (tests/integration/test_redis_dedupe.py), not mutated.
    async def _publish(
        self, envelopes: Sequence[Envelope], values: Sequence[bytes], won: dict[str, int], claim: Claim
    ) -> None:  # pragma: no mutate block
        items = [outgoing(envelopes[i].tenant_id, envelopes[i], values[i]) for i in won.values()]
        try:
            await self.log.append(self.topics.usage, items)
        except BaseException:
            # Cancelled or failed: the records may or may not be on the log; give the keys back so
            # the client's retry is admitted (the views de-duplicate if the first attempt landed).
            await self._give_back(list(won), claim)
            raise
        failpoints.hit(failpoints.DEDUPE_AFTER_APPEND)
        await self._mark_done(len(won), claim)

    # Talks to Redis: tested against it (tests/integration/test_redis_dedupe.py), not mutated.
    async def _give_back(self, keys: list[str], claim: Claim) -> None:  # pragma: no mutate block
        try:
            await self._release(keys=keys, args=[claim.value, claim.marker])
        except RedisError:
            # The marker expires after claim_ttl anyway; until then retries wait and then get a 503.
            log.warning("could not release %d de-duplication claims; they lapse by themselves", len(keys), exc_info=True)

    # Talks to Redis: tested against it (tests/integration/test_redis_dedupe.py), not mutated.
    async def _mark_done(self, count: int, claim: Claim) -> None:  # pragma: no mutate block
        try:
            await self.redis.set(claim.marker, DONE, pxat=claim.keep_until_ms)
        except RedisError:
            # The events are durable on the log, so the request did succeed; saying 503 now would
            # be false. The marker lapses, and a late retry is caught by the views' de-dup.
            log.warning("appended %d events but could not mark them done in Redis", count, exc_info=True)


@dataclass(frozen=True, slots=True)
class Claim:
    """One request's claims: the value its keys hold, its marker's key, and until when both are kept."""

    value: bytes
    marker: str
    keep_until_ms: int

    @staticmethod
    def new(keep_until_ms: int) -> Claim:
        token = secrets.token_hex(16)
        return Claim(PENDING + token.encode(), MARKER + token, keep_until_ms)


def _first_occurrences(envelopes: Sequence[Envelope]) -> dict[str, int]:
    first: dict[str, int] = {}
    for index, envelope in enumerate(envelopes):
        first.setdefault(seen_key(envelope), index)
    return first
