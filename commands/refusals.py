"""What a refused command's audit entry keeps of the request: our words, never the caller's.

An audit chain is hashed and cannot be erased (README, "Audit trail"), so whatever a refusal's
entry holds stays for good, beyond the reach of a GDPR erasure. A refused request is input the
platform did not take: its values (a subject's e-mail address in a malformed GDPR request, an
unknown query parameter named after a person, a path naming no tenant) have no business there.
The entry says why by kind and by place: the status and the problem's title, the refusal's kind,
and each error's place with its code; a place's or a path parameter's text that the caller chose
is kept only when it has the shape of our own names and ids, and is written `*` otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Our field, parameter and header names (`entitlements`, `idempotency-key`) and array indices: a place's
# segment of another shape was named by the caller (an unknown field, a mapping's key).
_OUR_NAME = re.compile(r"[a-z_][a-z0-9_\-]{0,63}|[0-9]{1,9}")
# Our ids and slugs: UUIDs, hex key ids, slugs, months (`2026-01`), event types (`com.acme.chat`).
# No capitals, spaces or `@`: a person's name or e-mail address is not kept in this shape.
_OUR_ID = re.compile(r"[a-z0-9][a-z0-9_.:\-]{0,127}")
# A validation error's code (pydantic's `type`: `greater_than_equal`, `missing`, `json_invalid`).
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def kept_place(location: str | Sequence[str]) -> str:
    """`body.entitlements.0.period` as it is; `query.Alice Smith` as `query.*`.

    Steps (pydantic's) are judged one by one: `["body", "Ann.Lee@x.org", "0"]` is `body.*.0`. A
    dotted location cannot tell a name's dots from its own, so from its first step of another
    shape on it is `*`: `query.Ann.Lee@x.org` is `query.*`, not `query.*.*`."""
    if isinstance(location, str):
        steps = location.split(".")
        ours = next((i for i, step in enumerate(steps) if not _OUR_NAME.fullmatch(step)), len(steps))
        return ".".join(steps[:ours] + (["*"] if ours < len(steps) else []))
    return ".".join(step if _OUR_NAME.fullmatch(step) else "*" for step in location)


def kept_resource(resource: str) -> str:
    """`tenants/3f2a…/plan` as it is; `tenants/Alice Smith/plan` as `tenants/*/plan`: each of the
    resource's segments kept where it has the shape of our ids, slugs and collection names."""
    return "/".join(segment if _OUR_ID.fullmatch(segment) else "*" for segment in resource.split("/"))


def refusal_reason(
    status: int, title: str, *, kind: str | None = None, places: Iterable[tuple[str | Sequence[str], str | None]] = ()
) -> str:
    """`422 Invalid request (invalid-body): body.limit greater_than_equal; body.* extra_forbidden`.

    `places` are each error's location and code (None where the error has none); the codes and
    the kind are kept only in the shape of ours, the kind only where it says more than the title."""
    reason = f"{status} {title}"
    if kind and kind != title.lower().replace(" ", "-") and _CODE.fullmatch(kind.replace("-", "_")):
        reason += f" ({kind})"
    told = [kept_place(place) + (f" {code}" if code and _CODE.fullmatch(code) else "") for place, code in places]
    return reason + (": " + "; ".join(told) if told else "")
