"""Typed errors of the sandbox-agent's action gateway (the errors its commands return are in
:mod:`symbi_contracts.sandbox_agent.errors`)."""

from __future__ import annotations

from symbi_common.errors import DomainError


class ActionRequestError(DomainError):
    """A workload's action request cannot be served; its ``code`` goes back to the workload in the reply."""

    code = "invalid_request"


class MalformedActionRequest(ActionRequestError):
    """The request line is not a JSON object of the request's shape."""

    code = "malformed_request"


class ActionRequestTooLarge(ActionRequestError):
    """The request line is longer than the gateway reads."""

    code = "request_too_large"


class UnknownAction(ActionRequestError):
    """The request names an action a workload cannot ask for."""

    code = "unknown_action"


class UnsupportedAction(ActionRequestError):
    """A known action the runtime decides and audits but does not perform."""

    code = "unsupported_action"


class TooManyActions(ActionRequestError):
    """The workload has sent more requests than one run may."""

    code = "too_many_requests"


class ActionFailed(ActionRequestError):
    """The service performing an allowed action refused it or could not be reached."""

    code = "action_failed"
