"""The lifecycle service's commands that other services send (``cmd.lifecycle.<action>``, JSON bodies).

The scheduler moves an agent Ready → Running → Ready with ``assign_task`` and ``complete_task``; every
enforcing service asks for ``suspend`` after a policy violation. Unknown keys are refused.
"""

from __future__ import annotations

import msgspec


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

    reason: str = "policy violation"
    policy_id: str | None = None


#: The commands other services send, by action (``cmd.lifecycle.<action>``).
COMMANDS: dict[str, type[AgentRequest]] = {
    "assign_task": AssignTaskRequest,
    "complete_task": CompleteTaskRequest,
    "suspend": SuspendRequest,
}
