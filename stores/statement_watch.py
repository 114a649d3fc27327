"""A bound on how long a PostgreSQL round trip may go unanswered, even by a server that says nothing.

PostgreSQL's own `statement_timeout` cancels a statement that runs too long, but a server that
stops answering altogether (SIGSTOP, a frozen VM, a partition that leaves the connection open)
cancels nothing: psycopg waits on the socket for as long as the operating system keeps the
connection open (for ever, when the peer's kernel still acknowledges), and the request waiting on
it with it, until its client gives up.

A `StatementWatch` is one thread per process. A round trip is `armed` with a deadline; once the
deadline passes unanswered, the watch shuts the connection's socket down. psycopg's wait then ends
at once with OperationalError ("server closed the connection unexpectedly"), the connection is
broken (its pool discards it) and the caller answers as for any outage: 503. Arming costs a lock and
a dictionary entry and a descriptor of its own for the socket (dup and close), about 5 µs a round
trip here, and wakes nothing: the thread looks every TICK seconds (deadlines are seconds long;
waking it at each arming cost 2 µs more a round trip).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import Any

TICK = 0.2  # seconds between two looks at the deadlines: a cut comes at most this late


class StatementWatch:
    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, int]] = {}  # token: (deadline, a descriptor of our own for the socket)
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.cut = 0  # connections shut down so far (tests and logs)

    def arm(self, conn: Any, seconds: float) -> int:
        """Watch `conn` (a psycopg connection) from now: a token for `disarm`."""
        deadline = time.monotonic() + seconds
        try:
            # A descriptor of our own for the socket: were the connection closed while armed (a
            # thread cancelled around it), its number could be reused by another socket; ours cannot.
            fd = os.dup(conn.pgconn.socket)
        except Exception:  # closed or broken already: its next round trip fails by itself
            return -1
        token = next(self._tokens)
        with self._lock:
            self._armed[token] = (deadline, fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="omni-statement-watch", daemon=True)
                self._thread.start()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching; False when the deadline had passed and the connection was shut down."""
        if token < 0:
            return True
        with self._lock:
            armed = self._armed.pop(token, None)
        if armed is None:
            return False
        os.close(armed[1])
        return True

    def armed(self, conn: Any, seconds: float | None) -> _Armed:
        """A context: round trips on `conn` inside it, unanswered for `seconds`, end with the
        connection broken (None: no bound)."""
        return _Armed(self, conn, seconds)

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                for token, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._shut(fd)
                        os.close(fd)

    def _shut(self, fd: int) -> None:
        """Shut the socket down (for every descriptor of it: psycopg's wait on its own ends at once)."""
        try:
            sock = socket.socket(fileno=fd)  # wraps our descriptor, not a copy: detached below
        except OSError:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
            self.cut += 1
        except OSError:
            pass
        finally:
            sock.detach()


class _Armed:
    """`StatementWatch.armed`, as a class (a generator-based context cost 1.5 µs more a round trip)."""

    __slots__ = ("_conn", "_seconds", "_token", "_watch")

    def __init__(self, watch: StatementWatch, conn: Any, seconds: float | None) -> None:
        self._watch = watch
        self._conn = conn
        self._seconds = seconds
        self._token: int | None = None

    def __enter__(self) -> None:
        if self._seconds is not None:
            self._token = self._watch.arm(self._conn, self._seconds)

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            self._watch.disarm(self._token)


STATEMENTS = StatementWatch()  # the process's one watch: every PostgreSQL pool and connection of Omni's
