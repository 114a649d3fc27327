"""Webhook hosts' lookups: one per owner in flight, on threads of their own (api/host_lookups.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from api.host_lookups import HostLookups
from api.problems import Problem


async def test_a_slow_lookup_holds_its_owner_alone_until_its_thread_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """A's lookup of a host whose DNS never answers is answered after `seconds` and goes on in its
    thread: A's next lookup is 429 until it ends, while B's lookups are answered at once (they waited
    behind A's on the loop's shared resolver threads: a minute of 503s)."""
    answers = threading.Event()

    def getaddrinfo(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        if host.endswith(".slow.test"):
            answers.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    lookups = HostLookups(threads=2, seconds=0.5)
    try:
        with pytest.raises(TimeoutError):
            await lookups.resolve("a", "x1.slow.test", 443)
        assert lookups.in_flight("a") == 1  # answered, still running
        with pytest.raises(Problem) as busy:
            await lookups.resolve("a", "x2.slow.test", 443)
        assert busy.value.status == 429 and busy.value.kind == "dns-lookup-busy" and busy.value.headers["Retry-After"] == "1"
        for _ in range(5):  # B is answered at once, again and again, beside A's stuck lookup
            found = await lookups.resolve("b", "hooks.example.com", 443)
            assert found[0][4] == ("93.184.215.14", 443)
        answers.set()
        async with asyncio.timeout(5):
            while lookups.in_flight("a"):
                await asyncio.sleep(0.01)
        assert await lookups.resolve("a", "hooks.example.com", 443)  # A's turn back once its lookup ended
    finally:
        answers.set()
        lookups.close()


async def test_with_every_thread_taken_a_lookup_is_answered_at_once_and_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued behind other owners' stuck lookups, C's timed out and then counted against C until it
    ran: its next tries were 429. Now C is told 503 at once, and nothing of it is left running."""
    answers = threading.Event()

    def getaddrinfo(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        answers.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    lookups = HostLookups(threads=2, seconds=0.2)
    try:
        for owner in ("a", "b"):
            with pytest.raises(TimeoutError):
                await lookups.resolve(owner, "x.slow.test", 443)
        for _ in range(2):
            with pytest.raises(Problem) as full:
                await lookups.resolve("c", "hooks.example.com", 443)
            assert full.value.status == 503 and full.value.kind == "dns-unavailable"
        assert lookups.in_flight("c") == 0
    finally:
        answers.set()
        lookups.close()
