"""omni.key_lookups: which tokens reach the event store, how often, and how many may wait."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest

from commands.control_plane import Principal
from omni.key_lookups import KeyLookups, LookupsBusy, TokenMemory

GOOD = "omni_0123456789abcdef_the-secret"
ALICE = Principal(tenant_id="t-alice", key_id="0123456789abcdef")


class Store:
    """The event store's answer to a token, counting reads; `gate` holds every read until set."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def read(self, token: str) -> Principal | None:
        self.reads.append(token)
        self.gate.wait(5)
        return ALICE if token == GOOD else None


@contextlib.contextmanager
def looking_up(store: Store, *, threads: int, waiting: int) -> Iterator[KeyLookups]:
    lookups = KeyLookups(store.read, threads=threads, waiting=waiting)
    try:
        yield lookups
    finally:
        lookups.close()


async def test_a_token_not_shaped_like_a_key_is_refused_without_a_read() -> None:
    store = Store()
    with looking_up(store, threads=1, waiting=4) as lookups:
        for token in ("", "abc", "omni_only-two", "omni__x", "bearer omni_a_b c".split()[0]):
            assert await lookups.verify(token) is None
        assert store.reads == []


async def test_a_refused_token_is_read_once_however_often_it_comes() -> None:
    store = Store()
    wrong = "omni_0123456789abcdef_not-the-secret"
    with looking_up(store, threads=2, waiting=4) as lookups:
        store.gate.clear()
        first = [asyncio.create_task(lookups.verify(wrong)) for _ in range(50)]  # at once: one read serves them all
        await asyncio.sleep(0.05)
        store.gate.set()
        assert await asyncio.gather(*first) == [None] * 50
        assert [await lookups.verify(wrong) for _ in range(50)] == [None] * 50  # later: from memory
        assert store.reads == [wrong]
        assert await lookups.verify(GOOD) == ALICE  # a good key is not remembered here (the key cache keeps it)
        assert await lookups.verify(GOOD) == ALICE
        assert store.reads == [wrong, GOOD, GOOD]
        assert lookups.waiting == 0


async def test_past_the_bound_a_lookup_is_refused_as_busy_and_frees_its_place_after() -> None:
    store = Store()
    tokens = [f"omni_{n:016x}_secret" for n in range(3)]
    with looking_up(store, threads=1, waiting=2) as lookups:
        store.gate.clear()
        waiting = [asyncio.create_task(lookups.verify(t)) for t in tokens[:2]]
        await asyncio.sleep(0.05)
        with pytest.raises(LookupsBusy):
            await lookups.verify(tokens[2])
        store.gate.set()
        assert await asyncio.gather(*waiting) == [None, None]
        assert lookups.waiting == 0
        assert await lookups.verify(tokens[2]) is None  # room again


async def test_a_caller_that_leaves_does_not_cancel_the_read_nor_leak_its_place() -> None:
    store = Store()
    wrong = "omni_00000000000000ff_secret"
    with looking_up(store, threads=1, waiting=1) as lookups:
        store.gate.clear()
        leaving = asyncio.create_task(lookups.verify(wrong))
        await asyncio.sleep(0.05)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert lookups.waiting == 1  # the read is still under way
        store.gate.set()
        for _ in range(100):
            if lookups.waiting == 0:
                break
            await asyncio.sleep(0.01)
        assert lookups.waiting == 0
        assert await lookups.verify(GOOD) == ALICE


async def test_a_store_failure_reaches_every_caller_and_is_not_remembered() -> None:
    calls = 0

    def failing(token: str) -> Principal | None:
        nonlocal calls
        calls += 1
        raise OSError("the store is down")

    lookups = KeyLookups(failing, threads=1, waiting=4)
    try:
        with pytest.raises(OSError):
            await lookups.verify(GOOD)
        with pytest.raises(OSError):
            await lookups.verify(GOOD)
        assert calls == 2 and lookups.waiting == 0
    finally:
        lookups.close()


def test_tokens_are_forgotten_by_age_and_by_capacity() -> None:
    now = [0.0]
    refused = TokenMemory(capacity=2, max_age=10.0, clock=lambda: now[0])
    refused.add("a")
    refused.add("b")
    assert "a" in refused and "b" in refused
    refused.add("a")  # added again: now the most recent
    refused.add("c")  # "b" is the least recently added
    assert "b" not in refused and "a" in refused and "c" in refused and len(refused) == 2
    now[0] = 5.0
    refused.add("c")
    now[0] = 11.0  # "a" was last added at 0, "c" at 5
    assert "a" not in refused and "c" in refused
    now[0] = 16.0
    assert "c" not in refused


async def test_a_key_changed_during_a_read_is_read_again() -> None:
    """A revocation seen while a read is under way: requests after it do not take that read's answer."""
    store = Store()
    generation = [0]
    lookups = KeyLookups(store.read, threads=2, waiting=4, generation=lambda: generation[0])
    try:
        store.gate.clear()
        before = asyncio.create_task(lookups.verify(GOOD))
        await asyncio.sleep(0.05)
        generation[0] += 1  # the key cache saw a key change
        after = asyncio.create_task(lookups.verify(GOOD))
        await asyncio.sleep(0.05)
        store.gate.set()
        assert await before == await after == ALICE
        assert store.reads == [GOOD, GOOD]  # two reads, not one shared
        assert lookups.waiting == 0
    finally:
        lookups.close()


async def test_past_the_bound_a_token_the_store_said_was_good_still_gets_its_read() -> None:
    store = Store()
    with looking_up(store, threads=1, waiting=1) as lookups:
        assert await lookups.verify(GOOD) == ALICE  # now known good
        store.gate.clear()
        flood = asyncio.create_task(lookups.verify("omni_00000000000000aa_guess"))
        await asyncio.sleep(0.05)
        with pytest.raises(LookupsBusy):
            await lookups.verify("omni_00000000000000bb_guess")
        good = asyncio.create_task(lookups.verify(GOOD))
        await asyncio.sleep(0.05)
        store.gate.set()
        assert await good == ALICE and await flood is None


async def test_callers_sharing_a_read_all_see_its_failure() -> None:
    gate = threading.Event()

    def failing(token: str) -> Principal | None:
        gate.wait(5)
        raise OSError("the store is down")

    lookups = KeyLookups(failing, threads=1, waiting=4)
    try:
        callers = [asyncio.create_task(lookups.verify(GOOD)) for _ in range(3)]
        await asyncio.sleep(0.05)
        gate.set()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(o, OSError) for o in outcomes)
        assert lookups.waiting == 0 and GOOD not in lookups.refused
    finally:
        lookups.close()
