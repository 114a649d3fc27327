"""`omni worker` serves its Prometheus metrics on OMNI_WORKER_METRICS_PORT, and keeps folding without them."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.request

import pytest

from streams.faust_app import serve_metrics


def test_a_taken_port_is_logged_and_the_worker_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            serve_metrics(port)  # does not raise
    assert f"cannot serve metrics on port {port}" in caplog.text


def test_metrics_are_served_on_the_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve_metrics(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert "omni_projected_records_total" in response.read().decode()


def _listening() -> set[str]:
    """This process's listening TCP sockets, as the kernel names them (socket:[inode]). Other sockets
    (a client connection an earlier test's thread is closing) come and go on their own."""
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
    return names & inodes


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to list the process's sockets")
def test_port_zero_serves_nothing(caplog: pytest.LogCaptureFixture) -> None:
    threads, listening = set(threading.enumerate()), _listening()
    with caplog.at_level(logging.INFO):
        serve_metrics(0)
    # Not on a port of the kernel's choosing either: nothing listens, no server thread started.
    assert _listening() == listening
    assert [t.name for t in set(threading.enumerate()) - threads if t.name.endswith("-health")] == []
    assert "metrics" not in caplog.text
