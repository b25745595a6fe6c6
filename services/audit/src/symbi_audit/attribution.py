"""Which agent an event concerns, kept on its row so that "events of agent X" finds everything the agent did.

An ``agent.<id>`` event concerns that agent. A task's events and its execution's (``task.<id>``,
``execution.<id>``: the same id) concern the agent the task's first event, ``task.submitted``, names in its
payload; the later ones do not name it, so the agent is remembered per task (bounded; after a restart it is
read back from the stored rows) and those events need no decryption. Any other event concerns the agent its
payload's top-level ``agent_id`` names, if any. A payload that no longer decrypts (crypto-shredded) names none.
"""

from __future__ import annotations

import msgspec
from symbi_common.datakeys import DataKeys
from symbi_common.errors import SymbiError
from symbi_common.sealing import OpenedEvent, decrypt

from symbi_audit.store import AuditStore

#: Aggregates whose id is a task's.
TASK_AGGREGATES = frozenset({"task", "execution"})
#: Tasks whose agent is kept in memory (then it starts over, reading stored rows as needed).
TASK_AGENTS_KEPT = 50_000


class AgentAttribution:
    def __init__(self, datakeys: DataKeys, store: AuditStore) -> None:
        self.datakeys = datakeys
        self.store = store
        self._task_agents: dict[str, str] = {}

    def forget(self) -> None:
        """Drop what is remembered (as a restart would)."""
        self._task_agents.clear()

    async def agent_of(self, opened: OpenedEvent) -> str | None:
        """The agent ``opened`` concerns, or None."""
        header = opened.header
        if header.aggregate_type == "agent":
            return header.aggregate_id
        task_id = header.aggregate_id if header.aggregate_type in TASK_AGGREGATES else None
        if task_id is not None and (known := self._task_agents.get(task_id)) is not None:
            return known
        agent = await self._payload_agent(opened)
        if task_id is not None:
            agent = agent or await self.store.agent_of_task(task_id)
            if agent is not None:
                if len(self._task_agents) >= TASK_AGENTS_KEPT:
                    self._task_agents.clear()
                self._task_agents[task_id] = agent
        return agent

    async def _payload_agent(self, opened: OpenedEvent) -> str | None:
        try:
            key = await self.datakeys.by_id(opened.header.data_key_id)
            payload = msgspec.msgpack.decode(decrypt(opened, key))
        except (SymbiError, msgspec.DecodeError):
            return None
        agent = payload.get("agent_id") if isinstance(payload, dict) else None
        return agent if isinstance(agent, str) else None
