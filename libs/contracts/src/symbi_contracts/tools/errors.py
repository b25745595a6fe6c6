"""Typed errors of MCP tools: what registering, approving and calling a tool can be refused with.

The ``code`` of each reaches an agent as the protocol error code of ``tools.call`` (docs/tools.md) and an
operator in the CLI.
"""

from __future__ import annotations

from symbi_common.errors import DomainError, InfrastructureError, NotFound


class ToolError(DomainError):
    """Root of the tool errors that come from the rules (retrying the same request will not help)."""

    code = "tool_error"


class UnknownTool(NotFound):
    """No registered server offers a tool of that name (``server.tool``)."""

    code = "unknown_tool"


class ToolRefused(ToolError):
    """A registration, listing or approval breaks a rule (malformed or colliding name, unpinned image,
    approving a definition that failed verification or is not the one listed now)."""

    code = "tool_refused"


class ToolsDisabled(ToolRefused):
    """The host's MCP client is switched off (``[mcp] discovery_enabled = false``): no tool server is started,
    listed or called."""

    code = "tools_disabled"


class ToolTierRefused(ToolRefused):
    """The sandbox tier asked for is lower than the server's risk assessment (or not a tier); ``details`` carry
    ``requested``, ``assessed`` and the ``factors`` that set the assessment."""

    code = "tool_tier_refused"


class ToolNotApproved(ToolError):
    """The tool is pending approval, blocked because its definition changed, or revoked."""

    code = "tool_not_approved"


class ToolVerificationFailed(ToolError):
    """The tool's definition failed SchemaPin verification (forged signature, revoked or changed key,
    unknown domain, missing signature where one is required)."""

    code = "tool_verification_failed"


class ToolCallFailed(ToolError):
    """The server answered the call with an error result, or its answer was unusable."""

    code = "tool_call_failed"


class ToolTimeout(ToolError):
    """The server did not answer the call in time; the call was cancelled."""

    code = "tool_timeout"


class ToolResultTooLarge(ToolError):
    """The server's result is larger than the gateway passes on; it was dropped, not truncated."""

    code = "tool_result_too_large"


class ToolServerUnavailable(InfrastructureError):
    """The tool's server could not be started or reached."""

    code = "tool_server_unavailable"
