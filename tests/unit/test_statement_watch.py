"""The statement watch (stores/statement_watch.py) on sockets of the test's own: a round trip left
unanswered past its deadline has its socket shut down, one answered in time is left alone, and a
connection closed while armed never costs another socket that took its descriptor's number."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from stores.statement_watch import TICK, StatementWatch


@dataclass
class PgConn:
    socket: int


@dataclass
class Conn:
    pgconn: PgConn


def shut_down(sock: socket.socket) -> bool:
    """Whether `sock` was shut down for sending (its peer reads the end of the stream)."""
    try:
        sock.send(b"x")
    except OSError:
        return True
    return False


def test_a_round_trip_past_its_deadline_is_cut_and_one_in_time_is_not() -> None:
    watch = StatementWatch()
    late, late_peer = socket.socketpair()
    prompt, prompt_peer = socket.socketpair()
    token = watch.arm(Conn(PgConn(late.fileno())), 0.05)
    with watch.armed(Conn(PgConn(prompt.fileno())), 0.05):
        pass  # answered at once
    time.sleep(0.05 + 3 * TICK)
    assert watch.disarm(token) is False  # it was cut
    assert shut_down(late) and late_peer.recv(10) == b""
    assert not shut_down(prompt) and watch.cut == 1
    for s in (late, late_peer, prompt, prompt_peer):
        s.close()


def test_a_connection_closed_while_armed_never_costs_the_socket_that_reuses_its_number() -> None:
    watch = StatementWatch()
    first, first_peer = socket.socketpair()
    number = first.fileno()
    watch.arm(Conn(PgConn(number)), 0.05)
    first.close()  # closed under the watch (a cancelled thread's connection)
    reused, reused_peer = socket.socketpair()
    assert number in (reused.fileno(), reused_peer.fileno())  # the number went to a new socket
    time.sleep(0.05 + 3 * TICK)
    assert not shut_down(reused) and not shut_down(reused_peer)
    for s in (first_peer, reused, reused_peer):
        s.close()


def test_a_closed_connection_is_not_armed() -> None:
    class Closed:
        @property
        def pgconn(self) -> PgConn:
            raise OSError("closed")

    watch = StatementWatch()
    with watch.armed(Closed(), 0.01):
        pass
    assert watch.disarm(watch.arm(Closed(), 0.01)) is True
