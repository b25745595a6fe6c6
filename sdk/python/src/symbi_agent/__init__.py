"""symbi_agent: the SDK an agent inside a Symbi sandbox uses to act (docs/agent-protocol.md).

``Agent`` (synchronous) and ``AsyncAgent`` connect to the sandbox's channel socket named by
``$SYMBI_SOCKET`` and fall back to stdio (requests on stderr, answers on stdin) where there is none.
Areas: ``memory``, ``knowledge``, ``data`` (the agent's filesystem grants), ``messages``, ``tools``, ``http``
(through the run's egress proxy) and ``models`` (the model gateway). Every refusal is a typed
:class:`SymbiAgentError`; :class:`NotAvailable` means the run cannot have that operation performed at all.
Standard library only.
"""

from symbi_agent.aio import AsyncAgent
from symbi_agent.client import Agent
from symbi_agent.deadlines import Deadlines
from symbi_agent.errors import (
    ActionFailed,
    BudgetExceeded,
    ChannelError,
    ChannelTimeout,
    Denied,
    Exists,
    IdentityRefused,
    Internal,
    InvalidRequest,
    MalformedRequest,
    NotAvailable,
    NotFound,
    RateLimited,
    ReadOnly,
    RequestTooLarge,
    SymbiAgentError,
    Timeout,
    TooLarge,
    TooManyRequests,
    Unavailable,
    UnknownOp,
    UnsupportedVersion,
)

__all__ = [
    "ActionFailed",
    "Agent",
    "AsyncAgent",
    "BudgetExceeded",
    "ChannelError",
    "ChannelTimeout",
    "Deadlines",
    "Denied",
    "Exists",
    "IdentityRefused",
    "Internal",
    "InvalidRequest",
    "MalformedRequest",
    "NotAvailable",
    "NotFound",
    "RateLimited",
    "ReadOnly",
    "RequestTooLarge",
    "SymbiAgentError",
    "Timeout",
    "TooLarge",
    "TooManyRequests",
    "Unavailable",
    "UnknownOp",
    "UnsupportedVersion",
]
