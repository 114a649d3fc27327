"""The usage sink for Kafka mode: Redis claims in front of the Kafka log.

Kafka cannot check "seen before?" and append in one step the way the embedded
log's SQLite transaction does, so each event's identity is claimed in Redis
first. Per event key `omni:seen:{tenant}:{sha256(source NUL id)}`:

- `SET key pending:<token> NX PX claim_ttl` claims it; one Lua script (CLAIM)
  does this for every key of a batch and answers, for each key it did not win,
  the value found there;
- the winners are appended in one `log.append`, then marked `done` until the
  event's keep_until (`PXAT`) by another script (MARK_DONE), so a retry within
  the acceptance window is a duplicate;
- if the append fails, our claims are deleted (only where they still hold our
  token) and the request fails with LogUnavailable: nothing is claimed as
  accepted that is not on the log;
- a key found `done` is a duplicate; a key another request holds as `pending:`
  is claimed again every POLL_SECONDS until it is `done` (a duplicate) or gone
  (its holder failed: this claim wins it).

So a batch costs two Redis round trips, whatever its size. The counts in the
response are right because of this; the views are exact regardless, because
MeterProjector also de-duplicates by (tenant, source, id).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from datetime import datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.envelope import Envelope, encode
from schemas.topics import Topics
from streams.kafka_log import KafkaLog
from streams.log import LogUnavailable, Outgoing

log = logging.getLogger(__name__)

DONE = b"done"
PENDING = b"pending:"
POLL_SECONDS = 0.02

# KEYS: the keys to claim; ARGV: our token, the claim's TTL in ms.
# Claims every free key; answers {position, value found, ...} for the keys it did not win
# (positions are 1-based), so nothing at all when every key was new.
CLAIM = """
local lost = {}
for i, key in ipairs(KEYS) do
  if not redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    lost[#lost + 1] = i
    lost[#lost + 1] = redis.call('GET', key)
  end
end
return lost
"""

# KEYS: keys whose events are on the log; ARGV[i]: until when KEYS[i] is kept (Unix ms).
MARK_DONE = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, 'done', 'PXAT', ARGV[i])
end
return #KEYS
"""

# Delete each key only if it still holds our claim: a claim that expired and was
# taken by another request must survive our failure.
RELEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
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
    ) -> None:
        self.log = log_
        self.topics = topics
        # A claim must outlive the append it protects, or a second request could
        # win the key while the first one's records are still on their way.
        self.claim_ttl_ms = int(max(claim_ttl, log_.produce_timeout + 1.0) * 1000)
        self.wait_timeout = wait_timeout
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=30
        )
        # EVALSHA; a server that does not know a script yet (first use, restart) is sent it once.
        self._claim_all = self.redis.register_script(CLAIM)
        self._mark_all_done = self.redis.register_script(MARK_DONE)
        self._release = self.redis.register_script(RELEASE)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ingest(self, envelopes: Sequence[Envelope], keep_until: Sequence[datetime]) -> list[bool]:
        if len(envelopes) != len(keep_until):
            raise ValueError("one keep_until per envelope")
        accepted = [False] * len(envelopes)
        waiting = _first_occurrences(envelopes)  # later copies in the same batch stay False
        deadline = time.monotonic() + self.wait_timeout
        token = PENDING + secrets.token_hex(16).encode()  # this request's claims, and only them
        while waiting:
            won, pending = await self._claim(waiting, token)
            if won:
                # Append what we hold before waiting on anyone else: holding claims while waiting
                # for another request's claims could deadlock two requests with crossed batches.
                await self._publish(envelopes, keep_until, won, token)
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
        return accepted

    async def _claim(self, waiting: dict[str, int], token: bytes) -> tuple[dict[str, int], dict[str, int]]:
        """Claim every key we can, in one round trip.

        Returns (won, pending), key -> batch index: the keys we now hold, and the keys another
        request holds. The keys found `done` are in neither: they are duplicates.
        """
        keys = list(waiting)
        try:
            lost = await self._claim_all(keys=keys, args=[token, self.claim_ttl_ms])
        except RedisError as failure:
            raise LogUnavailable(f"Redis (de-duplication) is unavailable: {failure}") from failure
        if not lost:
            return waiting, {}
        won = dict(waiting)
        pending = {}
        for position, value in zip(lost[::2], lost[1::2], strict=True):
            key = keys[position - 1]
            index = won.pop(key)
            if value != DONE:
                pending[key] = index
        return won, pending

    async def _publish(
        self, envelopes: Sequence[Envelope], keep_until: Sequence[datetime], won: dict[str, int], token: bytes
    ) -> None:
        items = [Outgoing(envelopes[i].tenant_id, encode(envelopes[i])) for i in won.values()]
        try:
            await self.log.append(self.topics.usage, items)
        except BaseException:
            # Cancelled or failed: the records may or may not be on the log; give the keys back so
            # the client's retry is admitted (the views de-duplicate if the first attempt landed).
            await self._give_back(list(won), token)
            raise
        await self._mark_done(list(won), [int(keep_until[i].timestamp() * 1000) for i in won.values()])

    async def _give_back(self, keys: list[str], token: bytes) -> None:
        try:
            await self._release(keys=keys, args=[token])
        except RedisError:
            # The claims expire after claim_ttl anyway; until then retries wait and then get a 503.
            log.warning("could not release %d de-duplication claims; they expire by themselves", len(keys), exc_info=True)

    async def _mark_done(self, keys: list[str], until_ms: list[int]) -> None:
        try:
            await self._mark_all_done(keys=keys, args=until_ms)
        except RedisError:
            # The events are durable on the log, so the request did succeed; saying 503 now would
            # be false. The pending claims expire, and a late retry is caught by the views' de-dup.
            log.warning("appended %d events but could not mark them done in Redis", len(keys), exc_info=True)


def _first_occurrences(envelopes: Sequence[Envelope]) -> dict[str, int]:
    first: dict[str, int] = {}
    for index, envelope in enumerate(envelopes):
        first.setdefault(seen_key(envelope), index)
    return first
