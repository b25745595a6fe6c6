"""Which agents are terminated: followed from the signed headers of ``agent.terminated`` events.

The sandbox-agent may not decrypt agent events (they are the lifecycle's), and needs not: an event's header —
its type and its aggregate — is signed in clear. Each ``evt.agent.*`` event is authenticated (signature, and
that the lifecycle's key may write the subject) before it counts; one that does not verify is ignored.
A message to a terminated agent goes to the dead letters (``recipient_terminated``) instead of its inbox.
"""

from __future__ import annotations

from typing import Any

import structlog
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import open_envelope

log = structlog.get_logger(__name__)
TERMINATED = "agent.terminated"


class TerminatedAgents:
    """The set of terminated agents, kept current by :meth:`follow` (an ordered consumer of ``evt.agent.>``)."""

    def __init__(self, registry: KeyRegistry) -> None:
        self.registry = registry
        self.agents: set[str] = set()

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.agents

    def apply(self, data: bytes, subject: str, sequence: int) -> None:
        """Count one stored agent event if it authenticates and is a termination."""
        try:
            opened = open_envelope(data, subject=subject, sequence=sequence, registry=self.registry)
        except SymbiError as exc:
            log.warning("an agent event does not authenticate; ignored", subject=subject, error=exc.message)
            return
        if opened.header.event_type == TERMINATED:
            self.agents.add(opened.header.aggregate_id)

    async def follow(self, js: Any) -> None:
        sub = await js.subscribe("evt.agent.>", ordered_consumer=True)
        try:
            async for msg in sub.messages:
                self.apply(msg.data, msg.subject, msg.metadata.sequence.stream)
        finally:
            await sub.unsubscribe()
