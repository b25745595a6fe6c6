"""Where the tool registry's events live: the signed event store (``evt.toolserver.<server>``), read through a
short cache of each server's state."""

from __future__ import annotations

import time
from typing import Protocol

from symbi_common.aggregate import Repository
from symbi_common.eventstore import EventStore
from symbi_contracts.tools.events import ToolServerEvent

from symbi_sandbox_agent.tools.registry import TOOLSERVER, Command, ServerState


class RegistryPort(Protocol):
    """Where the registry's events live: :class:`StoredRegistry` (the event store) is the one in use."""

    async def state(self, server: str, *, fresh: bool = False) -> ServerState: ...

    async def execute(self, server: str, command: Command) -> ServerState: ...


class StoredRegistry:
    """The registry in the signed event store (``evt.toolserver.<server>``, written by the sandbox-agent).

    A state read for a call may be up to ``max_age_s`` old: changes made by another process (another host's
    daemon) are seen within that time; changes made through this one at once."""

    def __init__(self, store: EventStore, *, max_age_s: float = 1.0) -> None:
        self.repo: Repository[ServerState, Command, ToolServerEvent] = Repository(store, TOOLSERVER)
        self.max_age_s = max_age_s
        self._read_at: dict[str, float] = {}

    async def state(self, server: str, *, fresh: bool = False) -> ServerState:
        now = time.monotonic()
        stale = now - self._read_at.get(server, -1e9) > self.max_age_s
        loaded = await self.repo.load(server, fresh=fresh or stale)
        if fresh or stale:
            self._read_at[server] = now
        return loaded.state

    async def execute(self, server: str, command: Command) -> ServerState:
        loaded, _ = await self.repo.execute(server, command)
        self._read_at[server] = time.monotonic()
        return loaded.state
