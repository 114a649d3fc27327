"""The audit trail: entries of a chain, its export as JSON Lines, the key its checkpoints are signed with."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, PlatformDep, acting_tenant
from api.problems import Problem
from api.roles import RoleFirstRoute
from commands.errors import NotFound
from omni.audit_keys import public_pem
from omni.bootstrap import ADMIN, Platform
from projections.audit_chain import EMPTY, Head, checkpoint, export_lines
from projections.audit_proof import prove, prove_consistency
from schemas.audit import AuditConsistency, AuditList, AuditProof
from schemas.cloudevents import Rfc3339Time
from schemas.envelope import format_time
from stores import audit as audit_store

router = APIRouter(prefix="/v1", tags=["audit"], route_class=RoleFirstRoute)

JSON_LINES = "application/jsonl"
PEM = "application/x-pem-file"
EXPORT_PAGE = 1000
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: such a filter matches nothing anyway
TenantQuery = Annotated[
    str | None,
    Query(description="Admin only: whose chain (a tenant id, or `_platform`, the default, for platform-wide actions)"),
]


def _key(platform: Platform) -> Ed25519PrivateKey:
    if platform.runner.audit is None:
        raise Problem(503, "Audit unavailable", "This process keeps no audit signing key.", kind="audit-unavailable")
    return platform.runner.audit.key


@router.get("/audit", response_model=AuditList, responses={404: {}, 422: {}})
def list_audit(
    platform: PlatformDep,
    principal: CallerDep,
    tenant: TenantQuery = None,
    from_: Annotated[Rfc3339Time | None, Query(alias="from", description="Entries recorded at or after (RFC 3339)")] = None,
    to: Annotated[Rfc3339Time | None, Query(description="Entries recorded before (RFC 3339)")] = None,
    action: Annotated[str | None, Query(max_length=200, pattern=NO_NUL, description="e.g. `api_key.revoke`")] = None,
    actor: Annotated[str | None, Query(max_length=200, pattern=NO_NUL, description="The key id that acted")] = None,
    outcome: Annotated[Literal["accepted", "rejected"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[int, Query(ge=0, le=2**62, description="The `next_after` of the previous page")] = 0,
) -> AuditList:
    """The commands of the caller's chain, accepted or refused, in chain order, as hashed; beside
    each, its actor's IP address and user agent opened (`opened_actor`, not hashed): a tenant's own
    keys' for the tenant, every actor's for the admin."""
    if from_ is not None and to is not None and from_ >= to:
        raise Problem(422, "Invalid time range", "`from` must be before `to`.", kind="invalid-range", location="query.to")
    chain = acting_tenant(platform, principal, tenant)
    filters = audit_store.Filters(
        start_us=None if from_ is None else audit_store.micros(from_),
        end_us=None if to is None else audit_store.micros(to),
        action=action,
        actor=actor,
        outcome=outcome,
    )
    with platform.db.transaction() as tx:
        rows = audit_store.entries(tx, chain, filters, after=after, limit=limit)
    entries = [orjson.loads(body) for _, body in rows]
    for entry, opened in zip(entries, platform.personal.open_actors(chain, [e["actor"] for e in entries]), strict=True):
        # The admin's own (the platform's commands on the tenant: its creation, its invoices) are the
        # operator's personal data: a tenant reads them sealed, as hashed, never opened.
        shown = principal.is_admin or entry["actor"].get("key_id") not in (None, ADMIN.key_id)
        entry["opened_actor"] = opened if shown else {"ip": None, "user_agent": None}
    return AuditList.model_validate({"data": entries, "next_after": rows[-1][0] if len(rows) == limit else None})


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {JSON_LINES: {"schema": {"type": "string"}}},
            "description": "The whole chain as JSON Lines: each entry, each periodic checkpoint after the entry it "
            "closes, and a final checkpoint signed now (verify with `omni audit verify`)",
        },
        404: {},
        422: {},
    },
)
async def export_audit(platform: PlatformDep, principal: CallerDep, tenant: TenantQuery = None) -> StreamingResponse:
    """The caller's chain, whole, for offline verification: as it stood when the export began."""
    chain = await run_in_threadpool(acting_tenant, platform, principal, tenant)
    key = _key(platform)

    def snapshot() -> tuple[Head, dict[int, str]]:
        with platform.db.transaction() as tx:
            head = audit_store.heads(tx, [chain]).get(chain, EMPTY)
            return head, audit_store.checkpoints_through(tx, chain, head.length)

    head, checkpoints = await run_in_threadpool(snapshot)
    final = checkpoint(chain, head, format_time(platform.clock()), final=True, key=key)

    def entries() -> Iterator[tuple[int, str]]:
        after = 0
        while after < head.length:
            with platform.db.transaction() as tx:
                page = audit_store.bodies_between(tx, chain, after, head.length, EXPORT_PAGE)
            if not page:
                return
            yield from page
            after = page[-1][0]

    lines = (line + "\n" for line in export_lines(entries(), checkpoints, final))
    name = f"audit-{chain}.jsonl"
    return StreamingResponse(lines, media_type=JSON_LINES, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/audit/proof", response_model=AuditProof, responses={404: {}, 422: {}, 503: {}})
def audit_proof(
    platform: PlatformDep,
    principal: CallerDep,
    seq: Annotated[int, Query(ge=1, le=2**62, description="The entry to prove")],
    tenant: TenantQuery = None,
    length: Annotated[
        int | None,
        Query(ge=1, le=2**62, description="Prove it in the periodic checkpoint of this many entries (default: one signed now)"),
    ] = None,
) -> AuditProof:
    """An inclusion proof of one entry of the caller's chain, in the Merkle tree head of a signed
    checkpoint: the entry and log2(n) hashes, none of the chain's other entries."""
    chain = acting_tenant(platform, principal, tenant)
    with platform.db.transaction() as tx:
        head = audit_store.heads(tx, [chain]).get(chain, EMPTY)
        body = audit_store.entry(tx, chain, seq)
        if body is None:
            raise NotFound(f"entry {seq} of chain {chain} not found")
        if length is None:
            size, signed = head.length, checkpoint(chain, head, format_time(platform.clock()), final=True, key=_key(platform))
        else:
            stored = audit_store.checkpoint_at(tx, chain, length) if length >= seq else None
            if stored is None:
                raise NotFound(f"no periodic checkpoint of chain {chain} at length {length} covers entry {seq}")
            size, signed = length, orjson.loads(stored)
        leaves = audit_store.leaves(tx, chain, size)
    return AuditProof.model_validate(prove(orjson.loads(body), leaves, signed))


@router.get("/audit/consistency", response_model=AuditConsistency, responses={404: {}, 422: {}, 503: {}})
def audit_consistency(
    platform: PlatformDep,
    principal: CallerDep,
    first: Annotated[int, Query(ge=1, le=2**62, description="The length of the checkpoint you kept")],
    tenant: TenantQuery = None,
    second: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**62,
            description="Prove it a prefix of the periodic checkpoint of this many entries (default: one signed now)",
        ),
    ] = None,
) -> AuditConsistency:
    """A consistency proof: the chain's first `first` entries are a prefix of a later checkpoint's,
    so the chain only grew since a checkpoint you kept (compare it with `omni audit verify-consistency`)."""
    chain = acting_tenant(platform, principal, tenant)
    with platform.db.transaction() as tx:
        head = audit_store.heads(tx, [chain]).get(chain, EMPTY)
        if second is None:
            size, signed = head.length, checkpoint(chain, head, format_time(platform.clock()), final=True, key=_key(platform))
        else:
            stored = audit_store.checkpoint_at(tx, chain, second)
            if stored is None:
                raise NotFound(f"no periodic checkpoint of chain {chain} at length {second}")
            size, signed = second, orjson.loads(stored)
        if first > size:
            raise NotFound(f"chain {chain} has no checkpoint of {first} entries before one of {size}")
        leaves = audit_store.leaves(tx, chain, size)
    return AuditConsistency.model_validate(prove_consistency(first, leaves, signed))


@router.get(
    "/audit/public-key",
    response_class=Response,
    responses={200: {"content": {PEM: {"schema": {"type": "string"}}}, "description": "The Ed25519 public key, PEM"}},
)
def audit_public_key(platform: PlatformDep, principal: CallerDep) -> Response:
    """The public key the audit checkpoints are signed with (SubjectPublicKeyInfo, PEM)."""
    return Response(public_pem(_key(platform)), media_type=PEM)
