"""Personal data at the door: data keys per (tenant, person), sealing at admission, opening for reads.

Key hierarchy: the master key (OMNI_GDPR_MASTER_KEY, 32 bytes; embedded mode generates one into the
data directory) wraps each person's 32-byte data key with AES key wrap (RFC 3394); the wrapped keys
live in the event-store database (stores.data_keys). From a data key two keys are derived with
HMAC-SHA256: one seals values (AES-256-GCM), one makes pseudonyms: keyed BLAKE2b for keys made
since the key store records a key's scheme, HMAC-SHA256 for those made before (a key's pseudonyms
never change: meters group and count by them). See schemas.gdpr for the sealed value's form.

Unwrapped keys are kept in memory (`DataKeyCache`), and that is safe only while every erasure
reaches `forget`: erasure deletes the key from the store first, then records `SubjectErased` in the
event store, which this process reads after each of its own commands and, in Kafka mode, whenever
PostgreSQL notifies a commit (the API key cache's mechanism: omni.key_cache). While notifications
cannot be promised (listener down), the cache keeps and serves nothing and every use reads the
store; a key read while an erasure was being recorded is not kept (`generation`). The data classes
come the same way, from the event store itself, so an event admitted after a data class's PUT was
answered is sealed, whichever API process admits it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.utils import get_topic

from commands.control_plane import actor_subject
from commands.errors import Invalid
from commands.gdpr import DataClass, GdprRequest
from omni import metrics
from schemas.cloudevents import SUBJECT_MAX_LENGTH
from schemas.envelope import Envelope, format_time
from schemas.gdpr import PSEUDONYM, PSEUDONYM_PREFIX, PSEUDONYM_PREFIX_BLAKE2B, SEALED, SEALED_VERSION, DataClassBody
from schemas.meters import path_parts
from stores import data_keys
from stores.database import Database, StoreUnavailable

CLASS_TOPICS = tuple(sorted(get_topic(kind) for kind in (DataClass.Defined, DataClass.Revised)))
ERASURE_TOPICS = (get_topic(GdprRequest.SubjectErased),)
ACTOR_IP, ACTOR_USER_AGENT = "$.actor.ip", "$.actor.user_agent"  # the paths an audit entry's ciphertext names
_SEAL_INFO = b"omni seal v1"
_PSEUDONYM_INFO = b"omni pseudonym v1"
_PSEUDONYM_BLAKE2B_INFO = b"omni pseudonym v2"
_SECRETS_INFO = b"omni platform secrets v1"  # the key sealing secrets the platform keeps (webhook signing keys)
_b64 = binascii.b2a_base64  # base64.b64encode's own code, less a call


class MasterKey:
    """The key-encryption key: wraps and unwraps data keys."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("the GDPR master key is 32 bytes (44 characters of base64)")
        self._secret = secret
        self.id = hashlib.sha256(b"omni kek id" + secret).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (ValueError, TypeError) as bad:
            raise ValueError(f"OMNI_GDPR_MASTER_KEY is not 32 bytes in base64: {bad}") from None

    def wrap(self, data_key: bytes) -> bytes:
        return aes_key_wrap(self._secret, data_key)

    def unwrap(self, wrapped: bytes) -> bytes:
        return aes_key_unwrap(self._secret, wrapped)

    def seal_secret(self, plain: bytes, aad: bytes) -> str:
        """A secret the platform keeps for itself (a webhook endpoint's signing key), sealed with
        AES-256-GCM under a key derived from this one, bound to `aad`: base64 of nonce and ciphertext."""
        nonce = os.urandom(12)
        return base64.b64encode(nonce + AESGCM(self._derived(_SECRETS_INFO)).encrypt(nonce, plain, aad)).decode()

    def open_secret(self, sealed: str, aad: bytes) -> bytes:
        """seal_secret's secret again (raises ValueError if another key or another `aad` sealed it)."""
        raw = base64.b64decode(sealed)
        try:
            return AESGCM(self._derived(_SECRETS_INFO)).decrypt(raw[:12], raw[12:], aad)
        except InvalidTag:
            raise ValueError("the secret was sealed under another master key, or for another use") from None

    def _derived(self, info: bytes) -> bytes:
        return hmac.digest(self._secret, info, "sha256")


def generate_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


SEALED_DOCUMENT = "omni-sealed-document:v1:"  # how a sealed document (DataKey.seal_document) starts


def document_associated_data(tenant_id: str, subject: str, name: str) -> bytes:
    """What a sealed document is bound to: its tenant, its person and its name (a request's id)."""
    return orjson.dumps([tenant_id, subject, name])


def associated_data(tenant_id: str, subject: str) -> bytes:
    """What a sealed event's ciphertext is bound to: it opens only for that tenant and person."""
    return orjson.dumps([tenant_id, subject])


class DataKey:
    """One person's data key, unwrapped: seals values and makes their pseudonyms, by the key's
    scheme (stores.data_keys): HMAC-SHA256 (keys made before schemes) or keyed BLAKE2b."""

    __slots__ = ("_aead", "_blake2b", "_mac", "_prefix", "key_id", "scheme")

    def __init__(self, key_id: str, secret: bytes, scheme: int = data_keys.HMAC_SHA256) -> None:
        self.key_id = key_id
        self.scheme = scheme
        self._blake2b = scheme == data_keys.BLAKE2B
        self._aead = AESGCM(hmac.digest(secret, _SEAL_INFO, "sha256"))
        # Keyed once; each pseudonym copies it. BLAKE2b: 0.4 µs a pseudonym; HMAC-SHA256 from
        # `cryptography`, 0.9 µs (hmac.digest took 2.5: OpenSSL 3 looks the algorithm up by name on
        # every call).
        self._mac: HMAC | Any
        if scheme == data_keys.BLAKE2B:
            self._mac = hashlib.blake2b(key=hmac.digest(secret, _PSEUDONYM_BLAKE2B_INFO, "sha256"), digest_size=16)
            self._prefix = PSEUDONYM_PREFIX_BLAKE2B
        elif scheme == data_keys.HMAC_SHA256:
            self._mac = HMAC(hmac.digest(secret, _PSEUDONYM_INFO, "sha256"), SHA256())
            self._prefix = PSEUDONYM_PREFIX
        else:
            raise StoreUnavailable(f"data key {key_id} has pseudonym scheme {scheme}, which this version does not know")

    def pseudonym(self, text: bytes) -> str:
        mac = self._mac.copy()
        mac.update(text)
        return self._prefix + (mac.hexdigest() if self._blake2b else mac.finalize()[:16].hex())

    def seal(self, values: dict[str, Any], aad: bytes, nonce: bytes | None = None) -> dict[str, dict[str, Any]]:
        """Each value (by its path) replaced by a sealed value carrying its pseudonym; one ciphertext
        of them all (a JSON object, path -> value), carried by the first. `nonce`: 12 fresh random bytes."""
        return dict(zip(values, self.sealed(values, aad, nonce or os.urandom(12)), strict=True))

    def sealed(self, values: dict[str, Any], aad: bytes, nonce: bytes) -> list[dict[str, Any]]:
        """seal()'s sealed values, in the order of `values` (admission's loop, per event: no dict of them)."""
        dumps, mac, prefix, blake2b = orjson.dumps, self._mac, self._prefix, self._blake2b
        sealed: list[dict[str, Any]] = []
        for value in values.values():
            copy = mac.copy()
            copy.update(dumps(value))
            sealed.append(
                {SEALED: SEALED_VERSION, PSEUDONYM: prefix + (copy.hexdigest() if blake2b else copy.finalize()[:16].hex())}
            )
        first = sealed[0]
        first["kid"] = self.key_id
        first["ct"] = _b64(nonce + self._aead.encrypt(nonce, dumps(values), aad), newline=False).decode()
        return sealed

    def seal_document(self, document: bytes, aad: bytes) -> str:
        """A whole document (a GDPR export) sealed under this key: SEALED_DOCUMENT, the key's id, then
        the nonce and ciphertext in base64. Erasing the key leaves it unreadable wherever a copy of
        its bytes lingers (a database's journal, a backup)."""
        nonce = os.urandom(12)
        return f"{SEALED_DOCUMENT}{self.key_id}:" + base64.b64encode(nonce + self._aead.encrypt(nonce, document, aad)).decode()

    def open_document(self, sealed: str, aad: bytes) -> bytes:
        """What seal_document sealed; InvalidTag or ValueError when it is not this key's."""
        key_id, _, text = sealed.removeprefix(SEALED_DOCUMENT).partition(":")
        if key_id != self.key_id:
            raise ValueError(f"sealed under key {key_id}, not {self.key_id}")
        raw = base64.b64decode(text)
        return self._aead.decrypt(raw[:12], raw[12:], aad)

    def open(self, ciphertext: str, aad: bytes) -> dict[str, Any]:
        """The values (by path) a sealed event's ciphertext holds."""
        raw = base64.b64decode(ciphertext)
        opened = orjson.loads(self._aead.decrypt(raw[:12], raw[12:], aad))
        if not isinstance(opened, dict):
            raise ValueError("not a sealed object")
        return opened


@dataclass(frozen=True, slots=True)
class CompiledClass:
    event_type: str
    personal: tuple[tuple[str, tuple[str, ...]], ...]  # (path, its steps under the event)
    subject: tuple[str, ...]  # ("subject",) or steps under data


def compile_class(event_type: str, body: DataClassBody) -> CompiledClass:
    return CompiledClass(event_type, tuple((p, path_parts(p)) for p in body.personal), path_parts(body.subject_property))


def person_of(event: Envelope, compiled: CompiledClass) -> str | None:
    """Whom the event is about, per its data class: the subject, or a text value under data."""
    if compiled.subject == ("subject",):
        return event.subject
    doc: Any = event.data
    for part in compiled.subject[1:]:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc if isinstance(doc, str) and doc else None


def _place(data: dict[str, Any], steps: tuple[str, ...]) -> tuple[dict[str, Any], str, str] | None:
    """Where the personal value at `steps` (under data) is: the dict holding it, its name there and
    its path; None when the event holds nothing there. An event shaped otherwise than its class (a
    string, a list or a number where the path goes on through an object) holds what it holds there
    in that value, so the place is that value's own: sealed whole, nothing of it is kept in clear."""
    doc = data
    for depth in range(1, len(steps) - 1):
        child = doc.get(steps[depth])
        if child is None:
            return None
        if type(child) is not dict:
            return doc, steps[depth], "$." + ".".join(steps[: depth + 1])
        doc = child
    name = steps[-1]
    return (doc, name, "$." + ".".join(steps)) if name in doc else None


SUBJECT = ("subject",)  # a data class's person is the CloudEvent subject (the default)
DATA = "$.data"  # the path of an event's whole data, sealed whole when it is no object


class KeysMissing(Exception):
    """Admission on the event loop needs keys (or data classes) from the store: run it in a thread."""


class DataKeyCache:
    """(tenant, person) -> DataKey, least recently used first out; trusted only while watched."""

    def __init__(self, *, capacity: int = 100_000, max_age: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[DataKey, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._watched = False
        self._current = True
        self.generation = 0

    @property
    def trusted(self) -> bool:
        return self._watched and self._current

    def get(self, tenant_id: str, subject: str) -> DataKey | None:
        entry = self._entries.get((tenant_id, subject))
        if entry is None:
            return None
        if self._clock() - entry[1] > self.max_age:
            with self._lock:
                self._entries.pop((tenant_id, subject), None)
            return None
        return entry[0]

    def put(self, tenant_id: str, keys: dict[str, DataKey], generation: int) -> None:
        with self._lock:
            if not self.trusted or generation != self.generation:
                return
            now = self._clock()
            for subject, key in keys.items():
                self._entries[(tenant_id, subject)] = (key, now)
                self._entries.move_to_end((tenant_id, subject))
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def forget(self, people: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            self.generation += 1
            for person in people:
                self._entries.pop(person, None)

    def set_trust(self, *, watched: bool | None = None, current: bool | None = None) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()
            if watched is not None:
                self._watched = watched
            if current is not None:
                self._current = current


class PersonalData:
    """Data classes and data keys for one process: seals at admission, opens for reads, erases."""

    def __init__(
        self, master: MasterKey | None, keys_db: Database, recorder: ApplicationRecorder, to_event: Callable[[Any], Any]
    ) -> None:
        self.master = master
        self.keys_db = keys_db
        self.recorder = recorder
        self._to_event = to_event
        self.cache = DataKeyCache()
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # when keys are made and persons seen (tests set it)
        self.classes: dict[str, CompiledClass] = {}
        self._position = 0
        self._reading = threading.Lock()

    # -- what the event store says: data classes and erasures ------------------------------------

    def start_watching(self) -> None:
        """Every change from now on reaches `catch_up`: read the data classes so far, trust the cache."""
        with self._reading:
            top = self.recorder.max_notification_id() or 0
            self._read(0, top, CLASS_TOPICS)
            self._position = top
            self.cache.set_trust(watched=True, current=True)

    def stop_watching(self) -> None:
        self.cache.set_trust(watched=False)

    @property
    def trusted(self) -> bool:
        return self.cache.trusted

    def catch_up(self) -> None:
        with self._reading:
            try:
                top = self.recorder.max_notification_id() or 0
                self._read(self._position, top, CLASS_TOPICS + ERASURE_TOPICS)
                self._position = max(self._position, top)
            except Exception:
                self.cache.set_trust(current=False)
                raise
            if not self.cache._current:
                self.cache.set_trust(current=True)

    def _read(self, position: int, top: int, topics: tuple[str, ...]) -> None:
        erased: list[tuple[str, str]] = []
        classes = dict(self.classes)
        while position < top:
            page = self.recorder.select_notifications(
                start=position, limit=500, stop=top, topics=topics, inclusive_of_start=False
            )
            for notification in page:
                domain_event = self._to_event(notification)
                if isinstance(domain_event, GdprRequest.SubjectErased):
                    erased.append((domain_event.tenant_id, domain_event.subject))
                elif isinstance(domain_event, DataClass.Defined | DataClass.Revised):
                    body = DataClassBody.model_validate(domain_event.spec)
                    classes[domain_event.event_type] = compile_class(domain_event.event_type, body)
            if len(page) < 500:
                break
            position = page[-1].id
        self.classes = classes
        if erased:
            self.cache.forget(erased)

    # -- keys --------------------------------------------------------------------------------------

    def _master(self) -> MasterKey:
        if self.master is None:
            raise StoreUnavailable("no GDPR master key is configured (OMNI_GDPR_MASTER_KEY): personal data cannot be sealed")
        return self.master

    def keys_for(self, tenant_id: str, subjects: Iterable[str], *, create: bool) -> dict[str, DataKey]:
        """The persons' data keys (blocking: may read and write the key store); without `create`,
        persons without a live key are left out."""
        wanted = set(subjects)
        found: dict[str, DataKey] = {}
        if self.cache.trusted:
            for subject in wanted:
                key = self.cache.get(tenant_id, subject)
                if key is not None:
                    found[subject] = key
        missing = wanted - found.keys()
        if not missing:
            return found
        master = self._master()
        generation = self.cache.generation
        with self.keys_db.transaction() as tx:
            stored = data_keys.live(tx, tenant_id, missing)
            new = missing - stored.keys()
            if create:
                now = format_time(self.clock())
                if new:
                    made = {
                        s: data_keys.StoredKey(
                            os.urandom(16).hex(), master.id, master.wrap(os.urandom(32)), data_keys.CURRENT_SCHEME
                        )
                        for s in new
                    }
                    data_keys.create(tx, tenant_id, made, now)
                    stored = data_keys.live(tx, tenant_id, missing)
                # Their last event, for retention: a key kept in memory is used for at most
                # `cache.max_age` more without coming back here (schemas.gdpr.RETENTION_SLACK).
                data_keys.touch(tx, tenant_id, stored, now)
        loaded = {s: self._unwrapped(k) for s, k in stored.items()}
        self.cache.put(tenant_id, loaded, generation)
        return found | loaded

    def master_key_problem(self) -> str | None:
        """Why the configured master key cannot be the one that wrapped the stored data keys (one live
        key is unwrapped with it), or None (it opens that key, or there is none yet). Blocking."""
        with self.keys_db.transaction() as tx:
            stored = data_keys.any_live(tx)
        if stored is None:
            return None
        try:
            self._unwrapped(stored)
        except (StoreUnavailable, InvalidUnwrap) as wrong:
            return f"the GDPR master key does not open the data keys already stored ({wrong})"
        return None

    def _unwrapped(self, stored: data_keys.StoredKey) -> DataKey:
        master = self._master()
        if stored.kek_id != master.id:
            raise StoreUnavailable(f"data key {stored.key_id} was wrapped by another master key ({stored.kek_id})")
        return DataKey(stored.key_id, master.unwrap(stored.wrapped), stored.scheme)

    def erase(self, tenant_id: str, subject: str) -> str | None:
        """Delete the person's key (blocking); its id, or None if there was none live. The caller then
        records SubjectErased, which every process reads to forget the key."""
        with self.keys_db.transaction() as tx:
            key_id = data_keys.erase(tx, tenant_id, subject, format_time(datetime.now(UTC)))
        self.cache.forget([(tenant_id, subject)])
        # No copy of the key left in SQLite's write-ahead log: after a no-op erasure too, since the one
        # that deleted the key may have stopped before this (a resumed request comes here again).
        self.keys_db.forget_overwritten()
        return key_id

    # -- admission ---------------------------------------------------------------------------------

    def protect(self, envelopes: list[Envelope], *, may_block: bool) -> None:
        """Seal every personal value of these envelopes in place. Without `may_block` (on the event
        loop), raises KeysMissing where the store must be read first. Events of a type without a data
        class cost one dict lookup each."""
        if not self.cache.trusted:
            if not may_block:
                raise KeysMissing()
            self.catch_up()
        classes = self.classes
        if not classes:
            return
        work: list[tuple[int, Envelope, CompiledClass, str]] = []
        errors: list[dict[str, Any]] = []
        for index, envelope in enumerate(envelopes):
            compiled = classes.get(envelope.type)
            if compiled is None or (envelope.data is None and compiled.subject == SUBJECT):
                continue  # no data holds no value at a personal path (all are under $.data)
            person = person_of(envelope, compiled)  # None for data that is no object: its person is in it
            if person is None:
                where = "$." + ".".join(compiled.subject)
                reason = f"the data class of its type names the person at {where}: the event holds no person's id there"
                errors.append({"index": index, "id": envelope.source_id, "reasons": [reason]})
                continue
            if len(person) > SUBJECT_MAX_LENGTH:  # a GDPR request could never name them
                where = "$." + ".".join(compiled.subject)
                reason = (
                    f"the person its data class names ({where}) is {len(person)} characters long; "
                    f"a person's id may be at most {SUBJECT_MAX_LENGTH}, as a GDPR request takes it"
                )
                errors.append({"index": index, "id": envelope.source_id, "reasons": [reason]})
                continue
            work.append((index, envelope, compiled, person))
        if errors:
            raise Invalid(f"{len(errors)} of {len(envelopes)} events are invalid; none were accepted", errors)
        if not work:
            return
        tenant_id = envelopes[0].tenant_id
        keys: dict[str, DataKey] = {}
        cache = self.cache
        for _, _, _, person in work:
            if person not in keys:
                key = cache.get(tenant_id, person)
                if key is None:
                    break
                keys[person] = key
        else:
            self._seal(envelopes, work, keys)
            metrics.SEALED_EVENTS.inc(len(work))
            return
        if not may_block:
            raise KeysMissing()
        metrics.DATA_KEY_READS.inc()
        self._seal(envelopes, work, self.keys_for(tenant_id, {p for _, _, _, p in work}, create=True))
        metrics.SEALED_EVENTS.inc(len(work))

    @staticmethod
    def _seal(envelopes: list[Envelope], work: list[tuple[int, Envelope, CompiledClass, str]], keys: dict[str, DataKey]) -> None:
        nonces = os.urandom(12 * len(work))  # one call for the batch: a syscall per event cost more than the cipher
        aads: dict[str, bytes] = {}
        start = 0
        for index, envelope, compiled, person in work:
            data = envelope.data
            found: dict[str, Any] = {}
            places: list[tuple[dict[str, Any], str]] = []
            if type(data) is not dict:  # data that is no object (a string, a list): all of it sealed
                found[DATA] = data
                places.append(({}, ""))
            else:
                for path, steps in compiled.personal:
                    if len(steps) == 2:  # most paths are data's own members
                        if steps[1] in data and path not in found:
                            found[path] = data[steps[1]]
                            places.append((data, steps[1]))
                    elif (place := _place(data, steps)) is not None and place[2] not in found:
                        found[place[2]] = place[0][place[1]]
                        places.append((place[0], place[1]))
            if compiled.subject != SUBJECT:  # the person is not the subject: say who it is
                envelopes[index] = envelope = msgspec.structs.replace(envelope, data_subject_id=person)
            if not found:
                continue
            aad = aads.get(person)
            if aad is None:
                aad = aads[person] = associated_data(envelope.tenant_id, person)
            sealed = keys[person].sealed(found, aad, nonces[start : start + 12])
            start += 12
            if type(data) is not dict:
                envelopes[index] = msgspec.structs.replace(envelope, data=sealed[0])
                continue
            for (parent, name), value in zip(places, sealed):  # noqa: B905 - one sealed value per place
                parent[name] = value

    # -- the audit trail's actors -------------------------------------------------------------------

    def seal_actor(self, chain: str, key_id: str | None, ip: str | None, user_agent: str | None) -> tuple[Any, Any]:
        """The actor's IP address and user agent sealed (blocking) under the data key of the actor, as
        the data subject `apikey:<key id>` of the chain's tenant: the audit chain commits to that, and
        erasing the subject leaves them unreadable while the chain still verifies."""
        values = {path: value for path, value in ((ACTOR_IP, ip), (ACTOR_USER_AGENT, user_agent)) if value is not None}
        if not values:
            return ip, user_agent
        subject = actor_subject(key_id)
        key = self.keys_for(chain, [subject], create=True)[subject]
        sealed = key.seal(values, associated_data(chain, subject))
        return sealed.get(ACTOR_IP), sealed.get(ACTOR_USER_AGENT)

    def open_actors(self, chain: str, actors: list[dict[str, Any]]) -> list[dict[str, str | None]]:
        """Each actor's IP address and user agent in clear (blocking), for the chain's owner: null once
        the actor was erased; entries from before sealing hold them in clear and show them as they are."""
        sealed_by = {actor_subject(a.get("key_id")) for a in actors if _is_sealed(a.get("ip")) or _is_sealed(a.get("user_agent"))}
        keys = self.keys_for(chain, sealed_by, create=False) if sealed_by else {}
        opened: list[dict[str, str | None]] = []
        for actor in actors:
            ip, user_agent = actor.get("ip"), actor.get("user_agent")
            if _is_sealed(ip) or _is_sealed(user_agent):
                subject = actor_subject(actor.get("key_id"))
                values = _open_sealed(keys.get(subject), [ip, user_agent], associated_data(chain, subject))
                ip = values.get(ACTOR_IP) if _is_sealed(ip) else ip
                user_agent = values.get(ACTOR_USER_AGENT) if _is_sealed(user_agent) else user_agent
            opened.append({"ip": ip, "user_agent": user_agent})
        return opened

    # -- reads -------------------------------------------------------------------------------------

    @staticmethod
    def opened(envelope: Envelope, keys: dict[str, DataKey], pseudonyms: dict[str, Any] | None = None) -> Any:
        """The event's data with its sealed values opened with its person's key in `keys`; values
        whose key is not there (erased) are null. A copy: the envelope is unchanged. With
        `pseudonyms`, each opened value is also put there under the pseudonym it was sealed with
        (what the meters group and count it by), so view rows can be opened too."""
        person = envelope.data_subject_id or envelope.subject or ""
        key = keys.get(person)
        opened: dict[str, Any] = {}
        found: list[dict[str, Any]] = []

        def collect(value: Any) -> None:
            if type(value) is dict:
                if value.get(SEALED) == SEALED_VERSION:
                    found.append(value)
                else:
                    for item in value.values():
                        collect(item)

        collect(envelope.data)
        for sealed in found:
            if "ct" in sealed and key is not None and sealed.get("kid") == key.key_id:
                try:
                    opened = key.open(sealed["ct"], associated_data(envelope.tenant_id, person))
                except (InvalidTag, ValueError, TypeError):
                    opened = {}

        def walk(value: Any, path: str) -> Any:
            if type(value) is dict:
                if value.get(SEALED) == SEALED_VERSION:
                    clear = opened.get(path)
                    if pseudonyms is not None and path in opened and isinstance(value.get(PSEUDONYM), str):
                        pseudonyms[value[PSEUDONYM]] = clear
                    return clear
                return {name: walk(item, f"{path}.{name}") for name, item in value.items()}
            if type(value) is list:
                return [walk(item, path) for item in value]
            return value

        return walk(envelope.data, "$.data")


def _is_sealed(value: Any) -> bool:
    return type(value) is dict and value.get(SEALED) == SEALED_VERSION


def _open_sealed(key: DataKey | None, values: list[Any], aad: bytes) -> dict[str, Any]:
    """What the ciphertext among these sealed values holds (by path); empty without the key (erased)."""
    for value in values:
        if _is_sealed(value) and "ct" in value and key is not None and value.get("kid") == key.key_id:
            try:
                return key.open(value["ct"], aad)
            except (InvalidTag, ValueError, TypeError):
                return {}
    return {}


def master_key_from(text: str | None) -> MasterKey | None:
    return MasterKey.from_text(text) if text else None
