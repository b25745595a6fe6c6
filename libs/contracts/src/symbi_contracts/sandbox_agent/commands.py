"""The sandbox-agent's commands: ``cmd.sandbox-agent.<host_id>.<action>`` with a :class:`TaskRef` body (JSON).

The scheduler freezes (``suspend``), thaws (``resume``) and stops (``terminate``) a task's sandbox on the host
that runs it; each appends the matching ``execution.*`` event. Errors come back as the types of
:mod:`symbi_contracts.sandbox_agent.errors`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from symbi_common.ids import ID_PATTERN

#: The actions each host serves.
ACTIONS = ("suspend", "resume", "terminate")


#: A task id as the scheduler makes them: one NATS subject token (the host's replies and events are addressed
#: by it), so anything else is refused when the command is decoded.
TASK_ID_PATTERN = ID_PATTERN


class TaskRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The task whose sandbox the command is about."""

    task_id: Annotated[str, msgspec.Meta(pattern=TASK_ID_PATTERN)]


def service_for(host_id: str) -> str:
    """The command service name of one host's sandbox-agent: ``cmd.<this>.<action>``."""
    return f"sandbox-agent.{host_id}"
