"""Typed errors of the SDK, one per error code of the protocol (docs/agent-protocol.md), under one root.

A gateway's answer ``{"type": "error", "error": {"code", "message", "retry_after"?, "details"?}}`` is raised
as the class registered for its code (:func:`from_reply`); a code the SDK does not know (a performing
service's own, e.g. ``invalid_context``) is raised as :class:`ActionFailed` with that code.
"""

from __future__ import annotations

from typing import Any


class SymbiAgentError(Exception):
    """Root of every SDK error: ``code`` (the protocol's), ``message``, ``retry_after`` (s) and ``details``."""

    code = "internal"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None, details: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ChannelError(SymbiAgentError):
    """The channel itself failed: no socket and no stdio, or the gateway went away mid-request."""

    code = "channel_closed"


class ChannelTimeout(ChannelError):
    """No answer within the call's deadline (:class:`~symbi_agent.deadlines.Deadlines`). The request was sent,
    so the gateway may have performed it; the connection was dropped and the next call opens a new one."""

    code = "channel_timeout"


class MalformedRequest(SymbiAgentError):
    code = "malformed_request"


class RequestTooLarge(SymbiAgentError):
    code = "request_too_large"


class UnsupportedVersion(SymbiAgentError):
    code = "unsupported_version"


class UnknownOp(SymbiAgentError):
    code = "unknown_op"


class NotAvailable(SymbiAgentError):
    """The run cannot have this operation performed: no tool servers or model providers on its host, or no
    network access in its definition (``hello``'s ``ops`` says which operations it can)."""

    code = "not_available"


class IdentityRefused(SymbiAgentError):
    """The request named an agent: the gateway knows the caller from its socket and refuses such requests."""

    code = "identity_refused"


class InvalidRequest(SymbiAgentError):
    """The policy schema rejects the request (an unknown context attribute, a wrong type)."""

    code = "invalid_request"


class Denied(SymbiAgentError):
    """The policy denied the action; ``details`` names the policies and the policy version."""

    code = "denied"


class Unavailable(SymbiAgentError):
    """No decision or no performing service right now; ask again after ``retry_after`` seconds."""

    code = "unavailable"


class TooManyRequests(SymbiAgentError):
    code = "too_many_requests"


class RateLimited(SymbiAgentError):
    """The agent is over its message rate, or the recipient's inbox is full: try again after ``retry_after``."""

    code = "rate_limited"


class Timeout(SymbiAgentError):
    """No answer in time (e.g. no reply to ``messages.request``)."""

    code = "timeout"


class RecipientTerminated(SymbiAgentError):
    """The addressed agent is terminated; the message went to the dead letters."""

    code = "recipient_terminated"


class Internal(SymbiAgentError):
    code = "internal"


class ActionFailed(SymbiAgentError):
    """The action was allowed but the service performing it refused it (its own code in ``code``)."""

    code = "failed"


ERRORS: dict[str, type[SymbiAgentError]] = {
    cls.code: cls
    for cls in (
        MalformedRequest,
        RequestTooLarge,
        UnsupportedVersion,
        UnknownOp,
        NotAvailable,
        IdentityRefused,
        InvalidRequest,
        Denied,
        Unavailable,
        TooManyRequests,
        RateLimited,
        Timeout,
        RecipientTerminated,
        Internal,
    )
}


class NotFound(SymbiAgentError):
    """The file or directory a ``data`` request names does not exist."""

    code = "not_found"


class TooLarge(SymbiAgentError):
    """More bytes than one ``data`` request may carry: read in pieces (offset, length), write with append."""

    code = "too_large"


class ReadOnly(SymbiAgentError):
    """A ``data.write`` under a grant that is read-only."""

    code = "read_only"


class Exists(SymbiAgentError):
    """A ``data.write`` with mode ``create`` of a file that exists already."""

    code = "exists"


class BudgetExceeded(SymbiAgentError):
    """A model call does not fit a budget of today: ``scope`` (``agent`` or ``tenant``), ``unit`` (``tokens``
    or ``micro_usd``), what is ``left`` of it and what the call would have ``requested``."""

    code = "budget_exceeded"

    @property
    def scope(self) -> str:
        return str(self.details.get("scope", ""))

    @property
    def unit(self) -> str:
        return str(self.details.get("unit", ""))

    @property
    def left(self) -> int:
        return int(self.details.get("left", 0))

    @property
    def requested(self) -> int:
        return int(self.details.get("requested", 0))


ERRORS.update({cls.code: cls for cls in (NotFound, TooLarge, ReadOnly, Exists, BudgetExceeded)})


def from_reply(error: dict[str, Any]) -> SymbiAgentError:
    """The typed error of an answer's ``error`` object."""
    code = str(error.get("code", "internal"))
    cls = ERRORS.get(code, ActionFailed)
    retry = error.get("retry_after")
    return cls(
        str(error.get("message", "")),
        code=code,
        retry_after=float(retry) if retry is not None else None,
        details=error.get("details"),
    )
