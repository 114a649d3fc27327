"""The load generator's bare HTTP client: keep-alive, answers framed by Content-Length (even when
they arrive in pieces), reconnection after `Connection: close`, and a clear error otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ops.bench.raw_http import HttpError, RawHttpClient


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[bytes], list[bytes], list[int]]]:
    """A server answering each request with the next canned answer (sent in two pieces); the
    requests it read, and the connections it accepted, are recorded."""
    answers: list[bytes] = []
    requests: list[bytes] = []
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            requests.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            writer.write(answer[:10])
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(answer[10:])
            await writer.drain()
            if b"close" in answer:
                writer.close()
                return

    listening = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", answers, requests, connections
    listening.close()


async def test_keep_alive_answers_and_reconnection(server: tuple[str, list[bytes], list[bytes], list[int]]) -> None:
    url, answers, requests, connections = server
    answers += [
        b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{"used":1}',
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ]
    async with RawHttpClient(url) as http:
        head = http.request_head("/v1/x", {"Authorization": "Bearer k"})
        assert await http.post(head, b'{"a":1}') == (200, b'{"used":1}')
        assert await http.post(head, b"{}") == (429, b"{}")
        assert await http.post(head, b"[]") == (200, b"")
    assert len(connections) == 2, "one connection kept alive, a second after the server closed the first"
    assert requests[0].startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b'\r\nAuthorization: Bearer k\r\nContent-Length: 7\r\n\r\n{"a":1}' in requests[0]


async def test_an_answer_without_a_length_fails_the_request(server: tuple[str, list[bytes], list[bytes], list[int]]) -> None:
    url, answers, _, _ = server
    answers.append(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
    async with RawHttpClient(url) as http:
        with pytest.raises(HttpError, match="does not read"):
            await http.post(http.request_head("/", {}), b"x")
