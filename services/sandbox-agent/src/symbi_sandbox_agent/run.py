"""One sandbox this daemon runs: its spec, its timing (pauses do not count against the timeout), how it ends.

Shared by the write path (:mod:`symbi_sandbox_agent.application`), the supervision of the container
(:mod:`symbi_sandbox_agent.supervisor`) and the action gateway (:mod:`symbi_sandbox_agent.gateway`),
which all import it and nothing of each other's upwards.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from symbi_common.decisions import DecisionRequest

from symbi_sandbox_agent.actions import ActionRequest
from symbi_sandbox_agent.spec import SandboxSpec


@dataclass
class Pending:
    """A denied request: held until a ``resume`` decides it allowed, or the run ends."""

    seq: int
    request: ActionRequest
    question: DecisionRequest
    resolved: asyncio.Event = field(default_factory=asyncio.Event)


class HeldActions(Protocol):
    """What the control commands see of a run's action gateway: the request it holds, and its resume."""

    @property
    def pending(self) -> Pending | None: ...

    async def resume(self) -> dict[str, Any]: ...


class NetworkPath(Protocol):
    """What the supervision sees of a run's egress proxy (:mod:`symbi_sandbox_agent.egress.host`)."""

    @property
    def bytes(self) -> tuple[int, int]:
        """``(out, in)``: what the run sent and received through it."""
        ...

    #: What the daemon's own TLS connections through it trust.
    tls: ssl.SSLContext

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection into the proxy for the SDK's ``http.request`` (the same rules as the sandbox's own)."""
        ...

    async def close(self) -> None: ...


@dataclass
class Running:
    """One sandbox this daemon runs."""

    spec: SandboxSpec
    agent_id: str
    started_at: float = field(default_factory=time.time)
    container_id: str = ""
    #: Whether the container is removed (then the clean-up has no Docker call to make).
    removed: bool = False
    paused_since: float | None = None
    paused_total: float = 0.0
    kill_reason: str = ""
    killed_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: str = ""
    #: Whether the terminal event is stored (until then the task stays in the heartbeat entry).
    stored: bool = False
    #: How many bytes of each stream are stored (the offset of its next ``execution.output`` chunk).
    output_end: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    #: The action gateway of a workload with ``actions: true`` (set while it runs).
    gateway: HeldActions | None = None
    #: The egress proxy of a network-enabled run (set while it runs).
    egress: NetworkPath | None = None

    def created(self, container_id: str) -> None:
        """The container exists (called from the thread that creates it)."""
        self.container_id = container_id

    def active_seconds(self, now: float) -> float:
        """Run time that counts against the timeout (time spent paused does not)."""
        paused = self.paused_total + (now - self.paused_since if self.paused_since is not None else 0.0)
        return now - self.started_at - paused
