"""Names of data keys (pure): which key seals an aggregate's events.

By default an aggregate has a key of its own, ``<type>.<id>``. An agent's tasks and their executions share
one key per agent instead (:func:`agent_data_key`): a task then writes no key record (no KV write, no notice
to every reader of that type), and erasing the agent (``audit erase agent.<id>``) shreds its tasks and
executions with it.
"""

from __future__ import annotations

#: The middle token of an agent's data key names.
AGENT_SCOPE = "by-agent"
#: The aggregate types sealed with their agent's key rather than one of their own.
AGENT_KEYED_TYPES = ("task", "execution")


def agent_data_key(aggregate_type: str, agent_id: str) -> str:
    """The name of the data key that seals every ``aggregate_type`` aggregate of agent ``agent_id``. Task and
    execution ids hold no dot, so it is never the name of an aggregate's own key."""
    return f"{aggregate_type}.{AGENT_SCOPE}.{agent_id}"
