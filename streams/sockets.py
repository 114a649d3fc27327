"""What the hand-written protocols (streams.redis_pipe, streams.kafka_pipe) do with a new connection."""

from __future__ import annotations

import asyncio
import socket
from typing import cast


def keep_alive(sock: socket.socket) -> None:
    """TCP keepalive as redis-py sets it (probes after 30 s idle, every 5 s, 3 of them): a connection
    a NAT or load balancer dropped while quiet is found out before a call waits on it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def connected(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """The transport of a connection just made, its TCP socket (if any) kept alive."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        keep_alive(sock)
    return cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
