"""The API's transport wrapper: writes of one event-loop turn leave in one send; closing sends
what is pending first; everything else is the wrapped transport's."""

from __future__ import annotations

import asyncio
from typing import Any

from api.server import CorkedTransport


class Recording:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return f"info:{name}"


async def test_writes_of_one_turn_leave_together() -> None:
    real = Recording()
    corked = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.write(b"{}")
    assert real.sent == []
    await asyncio.sleep(0)
    assert real.sent == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    corked.write(b"next")
    await asyncio.sleep(0)
    assert real.sent[-1] == b"next"
    assert corked.get_extra_info("peername") == "info:peername"


async def test_closing_sends_what_is_pending_first_and_nothing_after() -> None:
    real = Recording()
    corked = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"answer")
    corked.close()
    assert real.sent == [b"answer"] and real.closed
    corked.write(b"late")
    await asyncio.sleep(0)
    assert real.sent == [b"answer"], "a closing transport takes nothing more"
