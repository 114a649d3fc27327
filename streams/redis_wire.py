"""Redis clients whose commands are packed in C.

redis-py's asyncio connections pack every command in Python, re-joining the
buffer once per argument. A de-duplication claim carries one key per event, so
at 100 events a request that packing cost about 100 µs, a few per cent of the
API's CPU. hiredis (already here as the reply parser) packs the same bytes
about ten times faster; redis-py's synchronous client uses it that way too.

An argument hiredis does not take (a bytearray, a memoryview, a bool) goes to
redis-py's own packer, which converts it or raises DataError as it always has.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from omni import metrics


class HiredisPacking(AbstractConnection):
    """Mixed into a redis-py asyncio connection class: commands packed by hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # as redis-py: "CONFIG GET" is two arguments on the wire
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def packed(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` (plain TCP, TLS or Unix socket) with its commands packed by hiredis."""
    if connection_class not in _PACKED:
        _PACKED[connection_class] = type(f"Hiredis{connection_class.__name__}", (HiredisPacking, connection_class), {})
    return _PACKED[connection_class]


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client for `url` (redis://, rediss:// or unix://), as `Redis.from_url` makes one:
    it owns its pool and closes it with itself."""
    pool = aioredis.ConnectionPool.from_url(url, **options)
    pool.connection_class = packed(pool.connection_class)
    metrics.POOLS.watch_redis(pool)
    return aioredis.Redis.from_pool(pool)
