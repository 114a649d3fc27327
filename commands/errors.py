"""Named rejections. The API maps each to one problem+json status."""


class Rejected(Exception):
    """A command the domain refuses."""

    audited = False  # set once the control plane stored the refusal's audit entry (api.problems audits the rest)


class NotFound(Rejected):
    """The resource does not exist, or belongs to another tenant (same answer, by design)."""


class Conflict(Rejected):
    """The command contradicts the current state. `kind`: the problem's type; `members`: what it adds
    to the problem (api.problems)."""

    def __init__(self, message: str, *, kind: str = "conflict", members: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.members = members or {}


class Invalid(Rejected):
    """The command is well-formed but breaks a rule; `errors` says which and where."""

    def __init__(
        self,
        message: str,
        errors: list[dict[str, object]] | None = None,
        *,
        title: str = "Invalid events",
        kind: str = "invalid-events",
    ) -> None:
        super().__init__(message)
        self.errors = errors or []
        self.title = title  # the problem's title and type (api.problems)
        self.kind = kind


class LimitReached(Conflict):
    """The owner already holds as many of a resource as it may (its SLOs, its active keys): a 409,
    since the request is sound and the owner's current state refuses it (revoke a key, revise an SLO)."""

    def __init__(self, message: str, *, kind: str, limit: int) -> None:
        super().__init__(message)
        self.kind = kind  # the problem's type (api.problems)
        self.limit = limit


class TooSoon(Rejected):
    """The same change was made too often lately: a 429, to be tried again after `retry_after` seconds."""

    def __init__(self, message: str, *, kind: str, retry_after: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


def status_of(refused: Rejected) -> tuple[int, str]:
    """The status and title the API answers a refusal with (api.problems), which an audit entry's
    reason starts with too: (404, "Not found"), (409, "Conflict"), (422, its title)."""
    match refused:
        case NotFound():
            return 404, "Not found"
        case LimitReached():
            return 409, "Limit reached"
        case Conflict():
            return 409, "Conflict"
        case Invalid():
            return 422, refused.title
        case TooSoon():
            return 429, "Too many requests"
    return 400, "Refused"
