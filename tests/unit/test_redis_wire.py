"""Commands packed by hiredis are the bytes redis-py's own packer writes."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from streams.redis_wire import HiredisPacking, packed, redis_client

COMMANDS = [
    ("SET", "key", "value"),
    ("CONFIG GET", "maxmemory"),  # a command name of two words
    (b"CLIENT SETNAME", b"omni"),
    ("EVALSHA", "a" * 40, 3, b"k\x00\xff", "ключ", b"", -7, 2**70, 0.1, 1e300, float("-inf")),
    ("SET", "k", b"x" * 10_000, "PX", 30_000),  # past redis-py's buffer cutoff
    ("SET", memoryview(b"view"), bytearray(b"array")),  # hiredis takes neither: redis-py's packer does
]


@pytest.mark.parametrize("args", COMMANDS)
def test_same_bytes_as_redis_py(args: tuple[object, ...]) -> None:
    ours = packed(Connection)()
    assert isinstance(ours, HiredisPacking)
    assert b"".join(ours.pack_command(*args)) == b"".join(bytes(part) for part in Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [True, None, object()])
def test_refuses_what_redis_py_refuses(bad: object) -> None:
    with pytest.raises(DataError):
        packed(Connection)().pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///run/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_client_keeps_the_connection_kind_of_its_url(url: str, base: type) -> None:
    pool = redis_client(url, socket_timeout=5.0).connection_pool
    assert issubclass(pool.connection_class, HiredisPacking)
    assert issubclass(pool.connection_class, base)
    assert pool.connection_kwargs["socket_timeout"] == 5.0
