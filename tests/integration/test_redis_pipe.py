"""The pipelined Redis connection of consume's hot calls (streams/redis_pipe.py), on real Redis:
replies in order, an error reply failing only its own call, scripts loaded when the server does
not know them, and every failure of the connection a redis-py exception the next call recovers from."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError, TimeoutError

from streams.redis_pipe import RedisPipe
from tests.integration.conftest import free_port

pytestmark = pytest.mark.redis


@pytest.fixture
def key() -> str:
    return f"pipe-test:{uuid.uuid4().hex}"


@pytest.fixture
async def raw(redis_url: str, key: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.delete(key, key + ":list")
    await client.aclose()


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[RedisPipe]:
    connection = RedisPipe(redis_url)
    yield connection
    await connection.close()


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


async def test_calls_in_flight_together_are_answered_in_the_order_they_were_sent(
    pipe: RedisPipe, key: str, raw: aioredis.Redis
) -> None:
    replies = await asyncio.gather(*(pipe.call("INCR", key) for _ in range(300)))
    assert replies == list(range(1, 301))
    assert await raw.get(key) == b"300"


async def test_an_error_reply_fails_its_own_call_only(pipe: RedisPipe, key: str) -> None:
    before, wrong, after = await asyncio.gather(
        pipe.call("SET", key, "text"), pipe.call("INCR", key), pipe.call("GET", key), return_exceptions=True
    )
    assert before == b"OK" and after == b"text"
    assert isinstance(wrong, ResponseError) and "not an integer" in str(wrong)


async def test_a_script_the_server_does_not_know_is_loaded_and_run(pipe: RedisPipe, key: str) -> None:
    source = f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
    assert await pipe.call("SCRIPT", "EXISTS", sha) == [0]
    assert await pipe.evalsha(sha, source, [key], [5]) == 5
    assert await pipe.call("SCRIPT", "EXISTS", sha) == [1]
    assert await pipe.evalsha(sha, source, [key], [2]) == 7


async def killed_with_a_call_in_flight(pipe: RedisPipe, raw: aioredis.Redis, key: str) -> int:
    """Kill the pipe's connection while a BLPOP waits on it: the BLPOP fails with ConnectionError.
    Returns the killed connection's id."""
    first_id: int = await pipe.call("CLIENT", "ID")
    waiting = asyncio.create_task(pipe.call("BLPOP", key + ":list", 10))
    await asyncio.sleep(0.2)  # the BLPOP is on the wire
    assert await raw.client_kill_filter(_id=str(first_id)) == 1
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 5)
    return first_id


async def test_a_lost_connection_fails_the_calls_in_flight_and_the_next_call_connects_again(
    pipe: RedisPipe, key: str, raw: aioredis.Redis
) -> None:
    first_id = await killed_with_a_call_in_flight(pipe, raw, key)
    assert await pipe.call("SET", key, "back") == b"OK"
    assert await pipe.call("CLIENT", "ID") != first_id


async def test_a_reply_later_than_the_timeout_fails_with_redis_timeout_and_drops_the_connection(redis_url: str, key: str) -> None:
    pipe = RedisPipe(redis_url, reply_timeout=0.4)
    try:
        first_id = await pipe.call("CLIENT", "ID")
        started = time.monotonic()
        slow, queued = await asyncio.gather(pipe.call("BLPOP", key + ":list", 5), pipe.call("PING"), return_exceptions=True)
        assert isinstance(slow, TimeoutError) and isinstance(queued, TimeoutError), "behind it, the PING can no longer be matched"
        assert time.monotonic() - started < 2.0
        assert await pipe.call("PING") == b"PONG"
        assert await pipe.call("CLIENT", "ID") != first_id
    finally:
        await pipe.close()


async def test_no_server_is_a_connection_error() -> None:
    pipe = RedisPipe(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1.0)
    try:
        with pytest.raises(ConnectionError):
            await pipe.call("PING")
    finally:
        await pipe.close()


async def test_the_database_of_the_url_is_selected(redis_url: str, key: str) -> None:
    pipe = RedisPipe(with_db(redis_url, 14))
    other = aioredis.Redis.from_url(with_db(redis_url, 14))
    try:
        assert await pipe.call("SET", key, "in 14") == b"OK"
        assert await other.get(key) == b"in 14"
    finally:
        await other.delete(key)
        await other.aclose()
        await pipe.close()


async def test_the_user_and_password_of_the_url_are_sent(redis_url: str, raw: aioredis.Redis, key: str) -> None:
    user, secret = f"pipe-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await raw.acl_setuser(user, enabled=True, passwords=[f"+{secret}"], keys=["pipe-test:*"], commands=["+@all"])
    parts = urlsplit(redis_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    try:
        pipe = RedisPipe(urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}")))
        try:
            assert await pipe.call("ACL", "WHOAMI") == user.encode()
            assert await pipe.call("SET", key, "mine") == b"OK"
        finally:
            await pipe.close()
        wrong = RedisPipe(urlunsplit(parts._replace(netloc=f"{user}:not-{secret}@{host}")))
        try:
            with pytest.raises(AuthenticationError):
                await wrong.call("PING")
        finally:
            await wrong.close()
    finally:
        await raw.acl_deluser(user)


async def test_a_closed_pipe_refuses_calls(redis_url: str) -> None:
    pipe = RedisPipe(redis_url)
    assert await pipe.call("PING") == b"PONG"
    await pipe.close()
    with pytest.raises(ConnectionError):
        await pipe.call("PING")


def test_on_uvloop_as_the_api_runs_it(redis_url: str, key: str) -> None:
    """The API serves on uvloop, whose transports differ from asyncio's own."""

    async def scenario() -> None:
        pipe = RedisPipe(redis_url)
        raw = aioredis.Redis.from_url(redis_url)
        try:
            assert await asyncio.gather(*(pipe.call("INCR", key) for _ in range(50))) == list(range(1, 51))
            await killed_with_a_call_in_flight(pipe, raw, key)
            assert await pipe.call("INCR", key) == 51
        finally:
            await raw.delete(key)
            await raw.aclose()
            await pipe.close()

    uvloop.run(scenario())


async def test_closing_while_connecting_leaves_no_connection_behind(redis_url: str) -> None:
    pipe = RedisPipe(redis_url)
    connecting = asyncio.create_task(pipe.call("PING"))
    await asyncio.sleep(0)  # under way: the socket is being connected
    await pipe.close()
    with pytest.raises(ConnectionError):
        await connecting
    assert pipe._wire is None


async def test_the_connection_is_kept_alive_as_redis_py_keeps_its_own(pipe: RedisPipe) -> None:
    assert await pipe.call("PING") == b"PONG"
    assert pipe._wire is not None and pipe._wire.transport is not None
    sock = pipe._wire.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30


def test_tls_is_set_up_from_the_urls_ssl_options_as_redis_py_does() -> None:
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    pipe = RedisPipe(f"REDISS://cache.example:6380/0?ssl_ca_certs={bundle}&ssl_check_hostname=false&ssl_cert_reqs=required")
    assert pipe._tls is not None
    context = pipe._tls.get()
    assert context.check_hostname is False and context.verify_mode is ssl.CERT_REQUIRED
    assert context.get_ca_certs(), "the CA bundle named in the URL is loaded"
    assert RedisPipe("redis://cache.example:6379/0")._tls is None
