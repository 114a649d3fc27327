"""The Ed25519 key that signs the audit chains' checkpoints (README, "Audit trail").

OMNI_AUDIT_SIGNING_KEY holds it as PEM (PKCS#8) or names a file holding it. Without it, embedded
mode generates one once into the data directory (`audit_signing_key.pem`, readable by its owner
only), like the admin key; Kafka mode generates one once and keeps it in PostgreSQL (table
`audit_signing_key`), so every API process and worker signs with the same key. That is for
development: anyone who can write to the database could then sign a forged chain too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from omni.settings import Mode, Settings
from stores import audit as audit_store
from stores.database import Database

log = logging.getLogger(__name__)

KEY_FILE = "audit_signing_key.pem"
STORED_NAME = "checkpoints"


class BadSigningKey(ValueError):
    """OMNI_AUDIT_SIGNING_KEY is neither an Ed25519 private key in PEM nor a file holding one."""


def parse(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as unreadable:
        raise BadSigningKey(f"not a PEM private key without a password: {unreadable}") from unreadable
    if not isinstance(key, Ed25519PrivateKey):
        raise BadSigningKey(f"an {type(key).__name__}, not an Ed25519 private key")
    return key


def private_pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def configured(value: str) -> Ed25519PrivateKey:
    """OMNI_AUDIT_SIGNING_KEY: the PEM itself, or the path of a file holding it."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return parse(text.encode())
    path = Path(text).expanduser()
    if not path.is_file():
        raise BadSigningKey(f"OMNI_AUDIT_SIGNING_KEY is neither a PEM key nor an existing file: {path}")
    return parse(path.read_bytes())


def signing_key(settings: Settings, db: Database) -> Ed25519PrivateKey:
    """The configured key, else the one generated once (data directory, or PostgreSQL in Kafka mode)."""
    if settings.audit_signing_key:
        return configured(settings.audit_signing_key)
    if settings.mode is Mode.EMBEDDED:
        path = settings.data_dir / KEY_FILE
        if path.exists():
            return parse(path.read_bytes())
        key = Ed25519PrivateKey.generate()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(private_pem(key))
        return key
    with db.transaction() as tx:
        stored = audit_store.signing_key(tx, STORED_NAME)
    if stored is None:
        log.warning(
            "OMNI_AUDIT_SIGNING_KEY is not set: generating the audit signing key and keeping it in PostgreSQL "
            "(development only: set OMNI_AUDIT_SIGNING_KEY in production)"
        )
        with db.transaction() as tx:
            stored = audit_store.keep_signing_key(tx, STORED_NAME, private_pem(Ed25519PrivateKey.generate()))
    return parse(stored.encode())
