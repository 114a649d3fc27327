"""`Idempotency-Key` on POST requests, as Stripe's API takes it: a client that sends a POST again
with the same key (its connection dropped before the answer came) gets the first answer again,
and nothing is done twice: no second tenant, key, meter, endpoint or request.

- The key is the caller's own (scoped by the API key that sent it), at most 255 printable ASCII
  characters, and kept for a day once its request succeeded (2xx). That answer is stored sealed
  under the master key (it may hold a secret shown once: a new tenant's API key), and given again,
  byte for byte, with `Idempotent-Replayed: true`.
- The same key with another request (method, path, query or body) is 422 `idempotency-key-reused`;
  while its first request still runs, 409 `idempotency-key-in-progress` with `Retry-After`.
- A request that did not succeed (4xx, 5xx, or no answer) keeps nothing: its retry runs again.
- POST /v1/events (each CloudEvent is its own key, by id and source), consume (`idempotency_key` in
  its body) and Stripe's webhook (its event id) have their own, and pass through untouched.

Plain ASGI inside the edge: the caller is authenticated and its body bounded before this reads it,
and a request its route refuses for the caller's role goes on untouched (api/roles.py), to its 403.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass

import orjson
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import BodyProblem, Problem, problem_response, store_unavailable
from api.roles import RolesByPath
from commands.control_plane import Principal
from omni.bootstrap import Platform
from stores import idempotency as store
from stores.database import StoreUnavailable

log = logging.getLogger(__name__)

HEADER = b"idempotency-key"
KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, as Stripe's
KEEP_SECONDS = 86_400.0  # a succeeded request's answer is given again for a day
# A key whose request never finished (its process died) is taken over after this: longer than any
# request runs (each wait on a store is bounded in seconds), so a slow first request is never run twice.
PENDING_SECONDS = 120.0
KEEP_TRIES = 3  # writing a succeeded request's answer, at most this many times (0.2 s apart)
PURGE_EVERY_SECONDS = 3600.0
LARGEST_ANSWER = 1 << 20  # an answer larger is not kept (no POST of Omni's answers as much)
KEPT_HEADERS = (b"content-type", b"location")
OWN_KEYS = re.compile(r"^/v1/(events|quotas/[^/]+/consume|webhooks/.*)$")  # routes with idempotency of their own


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "status": self.status,
                "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in self.headers],
                "body": base64.b64encode(self.body).decode(),
            }
        )

    @staticmethod
    def decode(data: bytes) -> Answer:
        parsed = orjson.loads(data)
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in parsed["headers"]]
        return Answer(int(parsed["status"]), headers, base64.b64decode(parsed["body"]))


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """What makes two requests the same request."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def scope_of(principal: Principal) -> str:
    """Whose keys these are: the API key that sent them (a tenant's other keys, and the admin, have
    their own)."""
    return f"{principal.tenant_id or '_platform'}:{principal.key_id}"


def sealing_aad(scope: str, key: str) -> bytes:
    """A kept answer opens only as the answer of that caller's key."""
    return f"omni idempotent answer v1:{scope}:{key}".encode()


def invalid_key() -> Problem:
    return Problem(
        422,
        "Invalid Idempotency-Key",
        "An Idempotency-Key is one header of 1 to 255 printable ASCII characters (no spaces), such as a UUID.",
        kind="invalid-idempotency-key",
        location="header.Idempotency-Key",
    )


def reused() -> Problem:
    return Problem(
        422,
        "Idempotency-Key reused",
        "This Idempotency-Key was first used with another request (method, path, query or body); "
        "a key names one request. Send this one with a key of its own.",
        kind="idempotency-key-reused",
        location="header.Idempotency-Key",
    )


def unreadable() -> Problem:
    return Problem(
        409,
        "Idempotency-Key answer unreadable",
        "The first answer to this Idempotency-Key is kept sealed under a master key this process does not hold "
        "(OMNI_GDPR_MASTER_KEY changed); it was done. Send it with a new key only to do it again.",
        kind="idempotency-answer-unreadable",
    )


def in_progress() -> Problem:
    return Problem(
        409,
        "Idempotency-Key in progress",
        "The first request with this Idempotency-Key is still being answered; retry shortly for its answer.",
        kind="idempotency-key-in-progress",
        headers={"Retry-After": "1"},
    )


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, platform: Platform, roles: RolesByPath) -> None:
        self.app = app
        self.roles = roles
        self.db = platform.personal.keys_db
        self.box = platform.personal.master
        self._next_purge = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _idempotency_key(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        principal = scope.get("state", {}).get("principal") if key is not None else None
        if key is None or principal is None or self.box is None or OWN_KEYS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        if await self.roles.refuses(scope, principal):  # its route answers 403 before reading anything
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not KEY.fullmatch(key):
            await problem_response(request, invalid_key())(scope, receive, send)
            return
        try:
            body = await _whole_body(receive)
        except BodyProblem as refused:
            await problem_response(request, refused.problem)(scope, receive, send)
            return
        except ClientDisconnect:
            return  # nobody is left to answer
        caller = scope_of(principal)
        digest = fingerprint("POST", scope["path"], scope["query_string"], body)
        owner = secrets.token_hex(16)
        try:
            held = await asyncio.to_thread(self._claim, caller, key, digest, owner)
        except StoreUnavailable:
            await problem_response(request, store_unavailable())(scope, receive, send)
            return
        if held is None:
            await self._run(scope, receive, send, body, caller, key, owner)
        elif held.fingerprint != digest:
            await problem_response(request, reused())(scope, receive, send)
        elif held.state != store.DONE or held.sealed is None:
            await problem_response(request, in_progress())(scope, receive, send)
        else:
            try:
                answer = self._opened(held.sealed, caller, key)
            except ValueError:
                await problem_response(request, unreadable())(scope, receive, send)
                return
            await self._replay(answer, send)

    def _claim(self, caller: str, key: str, digest: str, owner: str) -> store.Held | None:
        now = time.time()
        with self.db.transaction() as tx:
            if now >= self._next_purge:
                store.purge(tx, now)
                self._next_purge = now + PURGE_EVERY_SECONDS
            return store.claim(tx, caller, key, digest, owner, now, now + PENDING_SECONDS)

    def _opened(self, sealed: str, caller: str, key: str) -> Answer:
        assert self.box is not None
        return Answer.decode(self.box.open_secret(sealed, sealing_aad(caller, key)))

    async def _replay(self, answer: Answer, send: Send) -> None:
        """The first request's answer, as it was, marked as given again."""
        headers = [*answer.headers, (b"idempotent-replayed", b"true"), (b"content-length", str(len(answer.body)).encode())]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _run(self, scope: Scope, receive: Receive, send: Send, body: bytes, caller: str, key: str, owner: str) -> None:
        """The request, with its body read already; its answer kept if it succeeded, else the key let go."""
        given = False

        async def body_then_receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # past the body: only the client's disconnect comes

        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0

        def note(message: Message) -> None:
            nonlocal status, headers, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(name.lower(), value) for name, value in message.get("headers", []) if name.lower() in KEPT_HEADERS]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
                if size <= LARGEST_ANSWER:
                    chunks.append(message.get("body", b""))

        settled = False  # kept or let go, before the client had the whole answer

        async def settle_first(message: Message) -> None:
            """The answer's last piece leaves only once the key holds it (or was let go): a client
            that sends the request again the moment it has the answer gets it again, never 409."""
            nonlocal settled
            note(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not settled:
                settled = True
                try:
                    await self._settle(caller, key, owner, Answer(status, headers, b"".join(chunks)), size)
                except Exception:  # the answer still goes out; the key stays pending (409) until it lapses
                    log.exception("the answer to Idempotency-Key %r could not be settled", key)
            await send(message)

        try:
            await self.app(scope, body_then_receive, settle_first)
        finally:
            if not settled:  # no answer sent (an error the outer layers answer): its retry runs again
                await asyncio.shield(asyncio.to_thread(self._let_go, caller, key, owner))

    async def _settle(self, caller: str, key: str, owner: str, answer: Answer, size: int) -> None:
        if 200 <= answer.status < 300:
            if size <= LARGEST_ANSWER:
                # Done: never let the key go now (a retry would do it again). Kept even if this
                # request is being cancelled; if it cannot be kept, the key stays pending, and its
                # retries are told 409 until PENDING_SECONDS pass.
                await asyncio.shield(asyncio.to_thread(self._keep, caller, key, owner, answer))
        else:
            await asyncio.shield(asyncio.to_thread(self._let_go, caller, key, owner))

    def _keep(self, caller: str, key: str, owner: str, answer: Answer) -> None:
        assert self.box is not None
        sealed = self.box.seal_secret(answer.encode(), sealing_aad(caller, key))
        for attempt in range(KEEP_TRIES):
            try:
                with self.db.transaction() as tx:
                    store.complete(tx, caller, key, owner, sealed, time.time() + KEEP_SECONDS)
                return
            except StoreUnavailable:
                if attempt + 1 == KEEP_TRIES:
                    log.warning("the answer to Idempotency-Key %r could not be kept: its retries get 409 for a while", key)
                    return
                time.sleep(0.2)

    def _let_go(self, caller: str, key: str, owner: str) -> None:
        try:
            with self.db.transaction() as tx:
                store.release(tx, caller, key, owner)
        except StoreUnavailable:
            pass  # the key stays pending until PENDING_SECONDS pass: its retries get 409 until then


def _idempotency_key(scope: Scope) -> str | None:
    """The request's key; a request sending it twice names no one request (an invalid key, 422)."""
    found = [value.decode("latin-1") for name, value in scope["headers"] if name == HEADER]
    if len(found) > 1:
        return ""
    return found[0] if found else None


async def _whole_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def install(app: FastAPI, platform: Platform) -> None:
    app.add_middleware(IdempotencyMiddleware, platform=platform, roles=RolesByPath(app))
