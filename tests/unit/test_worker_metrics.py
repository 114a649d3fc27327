"""`omni worker` serves its Prometheus metrics on OMNI_WORKER_METRICS_PORT, and keeps folding without them."""

from __future__ import annotations

import logging
import socket
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


def test_port_zero_serves_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        serve_metrics(0)
    assert "metrics" not in caplog.text
