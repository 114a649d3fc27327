"""The readiness and metrics server of `omni worker` and `omni relay`."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from omni import health_server
from omni.health_server import Readiness


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def test_readiness_follows_every_check() -> None:
    readiness = Readiness("unit", ("log", "views"))
    port = free_port()
    server = health_server.serve("127.0.0.1", port, readiness, "PORT")
    assert server is not None
    try:
        status, body = get(port, "/readyz")
        assert status == 503 and json.loads(body)["checks"] == {"log": "not checked yet", "views": "not checked yet"}
        readiness.ok("log")
        readiness.failed("views", "unavailable: down")
        assert get(port, "/readyz")[0] == 503
        readiness.ok("views")
        status, body = get(port, "/readyz")
        assert status == 200 and json.loads(body)["checks"] == {"log": "ok", "views": "ok"}
        assert get(port, "/healthz")[0] == 200
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("token", "sent", "status"), [(None, None, 200), ("s3", None, 401), ("s3", "Bearer nope", 401), ("s3", "Bearer s3", 200)]
)
def test_metrics_take_the_token_when_one_is_set(token: str | None, sent: str | None, status: int) -> None:
    port = free_port()
    server = health_server.serve("127.0.0.1", port, Readiness("unit", ()), "PORT", metrics_token=token)
    assert server is not None
    try:
        answer, body = get(port, "/metrics", {"Authorization": sent} if sent else None)
        assert answer == status
        if status == 200:
            assert b"omni_ready" in body
        assert get(port, "/readyz")[0] == 200  # readiness stays open: orchestrators probe it without secrets
    finally:
        server.shutdown()


def test_workers_and_relays_bind_loopback_and_expose_what_the_api_exposes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12, item 6: /metrics of `omni worker` and `omni relay` listen on loopback unless
    OMNI_METRICS_HOST says otherwise (as `omni serve` does unless --host does), answer HEAD, and
    name the same exposition format as the API's /metrics."""
    import inspect
    from types import SimpleNamespace

    from api.routes import health
    from omni.cli import serve
    from omni.settings import Settings
    from streams.faust_app import serve_metrics

    monkeypatch.delenv("OMNI_METRICS_HOST", raising=False)
    assert Settings().metrics_host == "127.0.0.1"
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_metrics).parameters["host"].default == "127.0.0.1"
    monkeypatch.setenv("OMNI_METRICS_HOST", "0.0.0.0")
    assert Settings().metrics_host == "0.0.0.0"

    port = free_port()
    server = health_server.serve("127.0.0.1", port, Readiness("unit", ()), "PORT")
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            worker_type = response.headers["Content-Type"]
        head = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as response:
            assert response.status == 200 and response.read() == b""
            assert response.headers["Content-Type"] == worker_type
    finally:
        server.shutdown()
    settings = SimpleNamespace(api_metrics=True, metrics_token=None)
    api = health.prometheus_metrics(SimpleNamespace(headers={}), SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    assert api.headers["content-type"] == worker_type
