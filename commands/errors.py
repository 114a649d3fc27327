"""Named rejections. The API maps each to one problem+json status."""


class Rejected(Exception):
    """A command the domain refuses."""

    audited = False  # set once the control plane stored the refusal's audit entry (api.problems audits the rest)


class NotFound(Rejected):
    """The resource does not exist, or belongs to another tenant (same answer, by design)."""


class Conflict(Rejected):
    """The command contradicts the current state."""


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
