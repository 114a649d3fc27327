"""Bodies of the audit routes (README, "Audit trail"): entries exactly as the chain hashes them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

SEALED_NOTE = (
    "Sealed (an object: `omni_sealed`, `ps`, and on the first of the two `kid` and `ct`; README, GDPR) under the data key "
    "of the actor as the data subject `apikey:<key_id>` of the chain's tenant; text in entries recorded before sealing"
)


class AuditActor(BaseModel):
    key_id: str | None = Field(description="The API key that issued the command (`admin` for the admin's)")
    ip: str | dict[str, Any] | None = Field(description=f"The IP address. {SEALED_NOTE}")
    user_agent: str | dict[str, Any] | None = Field(description=f"The user agent. {SEALED_NOTE}")


class OpenedActor(BaseModel):
    ip: str | None
    user_agent: str | None


class AuditEntryPublic(BaseModel):
    """One command, accepted or rejected, as its chain holds it: `hash` is the SHA-256 (hex) of the
    RFC 8785 canonical JSON of every other member, and `prev` the hash of the entry before."""

    kind: Literal["entry"]
    chain: str = Field(description="The tenant, or `_platform` for platform-wide admin actions")
    seq: int = Field(description="Position in the chain, from 1, without gaps")
    id: str = Field(description="The audit event's `omniid` on the audit topic")
    time: str = Field(description="When the command was recorded (RFC 3339, UTC)")
    action: str | None
    resource: str | None
    outcome: str | None = Field(description="`accepted` or `rejected`")
    reason: str | None
    actor: AuditActor
    trace_id: str | None
    prev: str = Field(description="The previous entry's hash (64 zeros for the first)")
    hash: str


class AuditListed(AuditEntryPublic):
    """An entry as hashed, and beside it (not hashed) its actor's IP address and user agent opened."""

    opened_actor: OpenedActor = Field(
        description="Not part of the hash: the actor's IP address and user agent in clear for the chain's owner; "
        "null once the actor (`apikey:<key_id>`) was erased"
    )


class AuditList(BaseModel):
    data: list[AuditListed]
    next_after: int | None = Field(default=None, description="Pass as `after` for the next page; null on the last")


class AuditCheckpoint(BaseModel):
    """A signed commitment to a chain's first `length` entries (Ed25519 over the RFC 8785 canonical
    JSON of every other member)."""

    kind: Literal["checkpoint"]
    chain: str
    length: int = Field(description="How many entries it commits to")
    head: str = Field(description="The hash of entry `length`")
    root: str = Field(description="The RFC 9162 Merkle tree head over the hashes of entries 1..length (hex)")
    at: str = Field(description="When it was signed (periodic: the time of entry `length`)")
    final: bool = Field(description="Signed on request (an export's end, a proof's), not periodic")
    key: str = Field(description="SHA-256 (hex) of the raw public key that signed it")
    signature: str = Field(description="Ed25519, base64")


class AuditProof(BaseModel):
    """An inclusion proof (RFC 9162, 2.1.3): `audit_path` leads from the entry's hash to the
    checkpoint's `root`. Check it offline with `omni audit verify-proof`."""

    chain: str
    seq: int
    entry: AuditEntryPublic
    tree_size: int = Field(description="The checkpoint's length: the tree the entry is proven in")
    leaf_index: int = Field(description="seq - 1")
    audit_path: list[str] = Field(description="Sibling hashes (hex), from the leaf up")
    checkpoint: AuditCheckpoint


class AuditConsistency(BaseModel):
    """A consistency proof (RFC 9162, 2.1.4): the chain's first `first_length` entries, which a
    checkpoint you kept commits to, are a prefix of the `second` checkpoint's. Check it offline with
    `omni audit verify-consistency`."""

    chain: str
    first_length: int
    second: AuditCheckpoint
    consistency_path: list[str] = Field(description="PROOF(first_length, D[second.length]), hex")
