"""What a refused command's audit entry keeps of the request: our words, never the caller's.

An audit chain is hashed and cannot be erased (README, "Audit trail"), so whatever a refusal's
entry holds stays for good, beyond the reach of a GDPR erasure. A refused request is input the
platform did not take: its values (a subject's e-mail address in a malformed GDPR request, an
unknown query parameter named after a person, a path naming no tenant) have no business there.
The entry says why by kind and by place: the status and the problem's title, the refusal's kind,
and each error's place with its code. A place's step the caller named (an unknown field or
parameter) is written `*`, and so is a resource's id that does not have the shape of that
collection's ids (a tenant's is a UUID, a key's 16 hex digits, a plan's a slug).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Our field, parameter and header names (`entitlements`, `idempotency-key`) and array indices.
_OUR_NAME = re.compile(r"[a-z_][a-z0-9_\-]{0,63}|[0-9]{1,9}")
# A validation error's code (pydantic's `type`: `greater_than_equal`, `missing`, `json_invalid`).
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Errors whose place's last step is a name the caller chose: a field or a parameter we do not take.
CALLER_NAMED = frozenset({"extra_forbidden", "unknown_parameter"})
# Where the request's own names are dotted after the first step (`query.from`): none has a dot.
_FLAT = frozenset({"query", "header", "path", "cookie"})

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")
# Each collection's ids, as the segment after its name holds them.
_IDS: dict[str, re.Pattern[str]] = {
    "tenants": _UUID,
    "invoices": _UUID,
    "breaches": _UUID,
    "webhook-endpoints": _UUID,
    "requests": _UUID,
    "keys": re.compile(r"[0-9a-f]{16}"),
    "periods": re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])"),
    "plans": _SLUG,
    "meters": _SLUG,
    "quotas": _SLUG,
    "slos": _SLUG,
    # A CloudEvents type: reverse-DNS words (`com.acme.Chat`); no spaces, no `@`.
    "data-classes": re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}"),
}
# The other words of our resources' paths.
_WORDS = frozenset(_IDS) | {"plan", "gdpr", "retention", "billing", "replays"}


def kept_place(location: str | Sequence[str], *, caller_named: bool = False) -> str:
    """`body.entitlements.0.period` as it is; `body.Ann` as `body.*`.

    Steps (pydantic's) are judged one by one: `["body", "Ann.Lee@x.org", "0"]` is `body.*.0`. In a
    dotted location, what follows `query.` (or `header.`) is one name, and elsewhere, from a step
    of another shape on, the rest is one `*`. `caller_named`: the last step is the caller's, written
    `*` whatever its shape (an unknown field `johnsmith`)."""
    if isinstance(location, str):
        first, _, rest = location.partition(".")
        steps = [first, rest] if first in _FLAT and rest else location.split(".")
    else:
        steps = list(location)
    callers = len(steps) - 1 if caller_named and len(steps) > 1 else None  # the step the caller named
    kept: list[str] = []
    for index, step in enumerate(steps):
        if index != callers and _OUR_NAME.fullmatch(step):
            kept.append(step)
        elif isinstance(location, str):
            return ".".join([*kept, "*"])
        else:
            kept.append("*")
    return ".".join(kept)


def kept_resource(resource: str) -> str:
    """`tenants/3f2a…/plan` as it is; `tenants/ann-lee/plan` as `tenants/*/plan`: each segment kept
    where it is one of our paths' words or, after a collection's name, has the shape of its ids."""
    segments = resource.split("/")
    kept = []
    for index, segment in enumerate(segments):
        ids = _IDS.get(segments[index - 1]) if index > 0 else None
        ours = ids.fullmatch(segment) if ids is not None else segment in _WORDS
        kept.append(segment if ours else "*")
    return "/".join(kept)


def refusal_reason(
    status: int, title: str, *, kind: str | None = None, places: Iterable[tuple[str | Sequence[str], str | None]] = ()
) -> str:
    """`422 Invalid request (invalid-body): body.limit greater_than_equal; body.* extra_forbidden`.

    `places` are each error's location and code (None where the error has none); the codes and
    the kind are kept only in the shape of ours, the kind only where it says more than the title."""
    reason = f"{status} {title}"
    if kind and kind != title.lower().replace(" ", "-") and _CODE.fullmatch(kind.replace("-", "_")):
        reason += f" ({kind})"
    told = [
        kept_place(place, caller_named=code in CALLER_NAMED) + (f" {code}" if code and _CODE.fullmatch(code) else "")
        for place, code in places
    ]
    return reason + (": " + "; ".join(told) if told else "")
