"""Typed errors of the audit service.

Each one subclasses the ``symbi_common.errors`` branch it belongs to (integrity, bad request, not
found, domain), so its HTTP status and wire form follow the rest of the system.
"""

from __future__ import annotations

from symbi_common.errors import DomainError, InfrastructureError, NotFound
from symbi_tlog.errors import CheckpointInvalid, ExportMalformed

__all__ = [
    "AuditBehind",
    "BadQuery",
    "CheckpointInvalid",
    "ExportMalformed",
    "FrameworkInvalid",
    "ProofUnavailable",
    "ReportTooLarge",
]


class ProofUnavailable(NotFound):
    """The proof asked for does not exist (leaf or tree size beyond what the audit log holds)."""

    code = "proof_unavailable"


class BadQuery(DomainError):
    """A query or report parameter is invalid; ``field`` names it."""

    code = "bad_query"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.field = field


class FrameworkInvalid(DomainError):
    """A custom compliance framework definition (TOML) is invalid."""

    code = "framework_invalid"


class ReportTooLarge(DomainError):
    """A report's range holds more than a report may (rows, or usage lookups): narrow since/until."""

    code = "report_too_large"

    def __init__(self, what: str, *, limit: int) -> None:
        super().__init__(
            f"the report would hold more than {limit} {what}, the limit; narrow since/until to a smaller range",
            what=what,
            limit=limit,
        )
        self.limit = limit


class AuditBehind(InfrastructureError):
    """The audit log has not verified and committed the stream up to a sequence a read depends on
    (``min_sequence``) within the wait; answering without it would leave out the caller's own write.
    The same request may succeed later."""

    code = "audit_behind"
    http_status = 503

    def __init__(self, *, wanted: int, position: int, waited_s: float) -> None:
        super().__init__(
            f"the audit log is at stream sequence {position}, not yet at {wanted}, after waiting {waited_s:g} s; "
            "retry later",
            wanted=wanted,
            position=position,
        )
        self.wanted = wanted
        self.position = position
