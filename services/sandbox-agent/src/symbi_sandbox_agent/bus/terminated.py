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
from symbi_common.ordered_pull import OrderedPull
from symbi_common.sealing import open_envelope
from symbi_common.streams import EVENTS_STREAM

log = structlog.get_logger(__name__)
TERMINATED = "agent.terminated"
#: How long the follower waits per pull while no agent event comes (an event wakes it at once).
IDLE_WAIT_S = 30.0


class TerminatedAgents:
    """The set of terminated agents, kept current by :meth:`follow` (an :class:`OrderedPull` of ``evt.agent.>``)."""

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
        """Every agent event from the stream's start, in order; runs until cancelled."""
        feed = await OrderedPull(js, stream=EVENTS_STREAM, subject="evt.agent.>").open()
        try:
            while True:
                for msg in await feed.take(IDLE_WAIT_S):
                    self.apply(msg.data, msg.subject, msg.metadata.sequence.stream)
        finally:
            await feed.close()
