"""The sandbox-agent's commands: ``cmd.sandbox-agent.<host_id>.<action>`` with a :class:`TaskRef` body (JSON).

The scheduler freezes (``suspend``), thaws (``resume``) and stops (``terminate``) a task's sandbox on the host
that runs it; each appends the matching ``execution.*`` event. Errors come back as the types of
:mod:`symbi_contracts.sandbox_agent.errors`.
"""

from __future__ import annotations

import msgspec

#: The actions each host serves.
ACTIONS = ("suspend", "resume", "terminate")


class TaskRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The task whose sandbox the command is about."""

    task_id: str


def service_for(host_id: str) -> str:
    """The command service name of one host's sandbox-agent: ``cmd.<this>.<action>``."""
    return f"sandbox-agent.{host_id}"
