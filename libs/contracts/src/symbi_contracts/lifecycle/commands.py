"""The lifecycle service's commands that other services send (``cmd.lifecycle.<action>``, JSON bodies).

The scheduler moves an agent Ready → Running → Ready with ``assign_task`` and ``complete_task``; every
enforcing service asks for ``suspend`` after a policy violation. Unknown keys are refused.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

#: The longest suspension ``reason`` (a policy denial's reason is cut to this by the enforcers).
MAX_REASON_CHARS = 1000
#: The longest id of the policy that caused a suspension.
MAX_POLICY_ID_CHARS = 512


class AgentRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of the requests that address one agent; unknown keys are refused."""

    agent_id: str = ""


class AssignTaskRequest(AgentRequest):
    """Assign a task to a Ready agent."""

    task_id: str
    description: str = ""


class CompleteTaskRequest(AgentRequest):
    """Complete the running task."""

    task_id: str | None = None
    outcome: str = "succeeded"


class SuspendRequest(AgentRequest):
    """Suspend a running agent after a policy violation."""

    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)] = "policy violation"
    policy_id: Annotated[str, msgspec.Meta(max_length=MAX_POLICY_ID_CHARS)] | None = None


#: The commands other services send, by action (``cmd.lifecycle.<action>``).
COMMANDS: dict[str, type[AgentRequest]] = {
    "assign_task": AssignTaskRequest,
    "complete_task": CompleteTaskRequest,
    "suspend": SuspendRequest,
}
