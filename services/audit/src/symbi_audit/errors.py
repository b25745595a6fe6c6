"""Typed errors of the audit service.

Each one subclasses the ``symbi_common.errors`` branch it belongs to (integrity, bad request, not
found, domain), so its HTTP status and wire form follow the rest of the system.
"""

from __future__ import annotations

from symbi_common.errors import DomainError, NotFound
from symbi_tlog.errors import CheckpointInvalid, ExportMalformed

__all__ = ["BadQuery", "CheckpointInvalid", "ExportMalformed", "FrameworkInvalid", "ProofUnavailable"]


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
