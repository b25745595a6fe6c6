"""Typed errors of the model gateway, each with the OpenAI error type and HTTP status it is answered with. Pure."""

from __future__ import annotations

from typing import Any, ClassVar

from symbi_common.errors import DomainError, InfrastructureError, SymbiError


class ModelError(SymbiError):
    """Root of the model gateway's errors; ``openai_type`` is the ``error.type`` of the OpenAI answer."""

    code = "model_error"
    openai_type: ClassVar[str] = "api_error"


class BadModelRequest(ModelError, DomainError):
    """The request is not one the gateway serves (not JSON, a field of the wrong type, too large)."""

    code = "invalid_request"
    http_status = 400
    openai_type = "invalid_request_error"


class UnknownModel(ModelError, DomainError):
    """No configured provider offers the model (or more than one does and the name does not say which)."""

    code = "not_found"
    http_status = 404
    openai_type = "invalid_request_error"


class ModelDenied(ModelError, DomainError):
    """Policy denied the call (the model is not allowed for the agent, or another policy forbade it)."""

    code = "denied"
    http_status = 403
    openai_type = "permission_error"


class BudgetExceeded(ModelError, DomainError):
    """The call's reservation does not fit what is left of a budget: ``scope`` is ``agent`` or ``tenant``,
    ``unit`` is ``tokens`` or ``micro_usd``, ``left`` what is left of it today, ``requested`` what the call
    would reserve."""

    code = "budget_exceeded"
    http_status = 429
    openai_type = "insufficient_quota"

    def __init__(self, message: str, *, scope: str, unit: str, left: int, requested: int, **details: Any) -> None:
        super().__init__(message, scope=scope, unit=unit, left=left, requested=requested, **details)
        self.scope = scope
        self.unit = unit
        self.left = left
        self.requested = requested


class ModelUnavailable(ModelError, InfrastructureError):
    """The decision, the budget ledger or the provider could not be had; asking again later may work."""

    code = "unavailable"
    http_status = 503
    openai_type = "api_error"


class BadCredential(ModelUnavailable):
    """The provider's credential in the secrets store cannot be sent (``secret`` names it; its value is never
    quoted): nothing was sent, an operator must set it again."""


class UpstreamFailed(ModelError, InfrastructureError):
    """The provider answered with an error or could not be reached; its reservation was released."""

    code = "upstream_failed"
    http_status = 502
    openai_type = "api_error"


class StreamCutOff(ModelError, InfrastructureError):
    """The gateway cut a call's answer off at one of its limits: ``limit`` is ``deadline`` (the answer took longer
    than a call may, e.g. a provider trickling bytes) or ``caller_stalled`` (the caller took nothing for too long,
    e.g. it stopped reading its side). The provider's connection is closed and, as what it generated meanwhile is
    unknown, the call is charged its whole reservation."""

    code = "stream_cut_off"
    http_status = 504
    openai_type = "api_error"
