"""`omni serve`'s HTTP server as a client meets it over a socket: headers bounded in size and
in time at the transport, before the app sees them; and the admin key printed once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner

from api.app import create_app
from api.server import Server, server_config
from omni import cli
from omni.bootstrap import build
from omni.settings import Settings
from tests.e2e.conftest import ADMIN, embedded_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: FastAPI, settings: Settings) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """`app` behind `omni serve`'s own server configuration, on a free port of this host: the port,
    and the server (a test may shut it down itself)."""
    port = free_port()
    running = Server(server_config(app, settings, host="127.0.0.1", port=port), app)
    task = asyncio.create_task(running.serve())
    while not running.started:
        await asyncio.sleep(0.01)
    try:
        yield port, running
    finally:
        running.should_exit = True
        await task


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[int]:
    settings = embedded_settings(tmp_path / "data", header_timeout_seconds=0.5, max_header_bytes=4096, body_timeout_seconds=0.5)
    async with serving(create_app(platform=build(settings), background=False), settings) as (port, _):
        yield port


async def exchange(port: int, request: bytes, *, wait: float = 5.0) -> bytes:
    """Send `request`, then read until the server closes the connection (or `wait` passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=wait)
    finally:
        writer.close()


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


async def test_a_normal_request_is_served(server: int) -> None:
    answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert status_and_body(answer) == (200, {"status": "ok"})


async def test_head_is_answered_by_the_server_without_a_body(server: int) -> None:
    """The server, which saw HEAD, sends the GET's headers and no body: the connection stays usable."""
    answer = await exchange(
        server, b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 15" in head.lower(), head
    assert status_and_body(rest) == (200, {"status": "ok"}), "the next request on the connection is answered"


async def test_headers_past_the_limit_are_refused_before_the_app(server: int) -> None:
    # 100 KiB of one header, sent as a client would, with more of the request still to come.
    answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 100_000 + b"\r\n")
    status, body = status_and_body(answer)
    assert status == 431 and body["type"].endswith("/headers-too-large") and "4096 bytes" in body["detail"]


async def test_headers_that_never_finish_are_cut_off(server: int) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ", wait=5.0)
    status, body = status_and_body(answer)
    assert status == 408 and body["type"].endswith("/header-timeout")
    assert loop.time() - started < 4.0  # the 0.5 s limit, not the test's own 5 s wait


async def test_a_body_that_stalls_is_cut_off(server: int) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    head = f"POST /v1/tenants HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\n"
    head += "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    answer = await exchange(server, head.encode() + b'{"name": "slow', wait=5.0)
    status, body = status_and_body(answer)
    assert status == 408 and body["type"].endswith("/body-timeout")
    assert loop.time() - started < 4.0


async def test_a_connection_that_sends_nothing_is_closed(server: int) -> None:
    assert await exchange(server, b"", wait=5.0) == b""


def test_the_admin_key_is_printed_once_when_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[int] = []
    monkeypatch.setattr("api.server.serve_app", lambda app, settings, host, port: served.append(port))
    monkeypatch.delenv("OMNI_ADMIN_KEY", raising=False)
    env = {"OMNI_DATA_DIR": str(tmp_path / "data"), "OMNI_METER_API_CALLS": "false"}
    runner = CliRunner()

    missing = runner.invoke(cli.app, ["admin-key"], env=env)
    assert missing.exit_code == 1 and "No admin key" in missing.output and str(tmp_path / "data") in missing.output
    assert not (tmp_path / "data" / "admin_key").exists()  # asking for the key creates none

    first = runner.invoke(cli.app, ["serve", "--port", "1"], env=env)
    assert first.exit_code == 0, first.output
    key = (tmp_path / "data" / "admin_key").read_text().strip()
    assert key in first.output
    assert f"Data: {(tmp_path / 'data').resolve()}" in first.output  # where the data lives (README)
    again = runner.invoke(cli.app, ["serve", "--port", "1"], env=env)
    assert again.exit_code == 0 and key not in again.output
    assert runner.invoke(cli.app, ["admin-key"], env=env).output.strip() == key
    assert served == [1, 1]


@pytest.mark.parametrize(("proxies", "recorded"), [(None, "127.0.0.1"), ("127.0.0.1", "203.0.113.9")])
async def test_a_forwarded_address_is_believed_only_from_the_proxies_named(
    tmp_path: Path, proxies: str | None, recorded: str
) -> None:
    """uvicorn's default believed X-Forwarded-For from any local process: an audit entry then recorded
    whatever address (or text) it named as the actor's IP."""
    import httpx

    from tests.e2e.conftest import Omni

    settings = embedded_settings(tmp_path / "data", forwarded_allow_ips=proxies)
    app = create_app(platform=build(settings), background=False)
    async with serving(app, settings) as (port, _), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        omni = Omni(client, app.state.platform, app)
        made = await client.post(
            "/v1/tenants",
            json={"name": "acme", "plan": "pro"},
            headers={**omni.auth(ADMIN), "X-Forwarded-For": "203.0.113.9"},
        )
        assert made.status_code == 201, made.text
        await omni.settle()
        trail = await client.get("/v1/audit", params={"tenant": made.json()["id"]}, headers=omni.auth(ADMIN))
        (entry,) = [e for e in trail.json()["data"] if e["action"] == "tenant.create"]
        assert entry["opened_actor"]["ip"] == recorded
