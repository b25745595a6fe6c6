"""What a run's action paths need of the daemon and of the run's gateway, as protocols: the daemon and
:class:`~symbi_sandbox_agent.gateway.ActionGateway` implement them, and the protocol server and the gateway are
written against them (no import of the daemon)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from symbi_common.decisions import Decision, DecisionRecord, DecisionRequest
    from symbi_common.service import ServiceRuntime
    from symbi_contracts.sandbox_agent.events import ExecutionAction

    from symbi_sandbox_agent.models.gateway import ModelGateway
    from symbi_sandbox_agent.run import Running
    from symbi_sandbox_agent.tools.service import ToolService


class RunHost(Protocol):
    """What a run's gateway needs of the daemon: its runtime, its services, freezing and thawing the run, and
    recording a decision."""

    @property
    def rt(self) -> ServiceRuntime: ...

    #: The MCP tools agents of this host may call; None: none configured (``tools.*`` is ``not_available``).
    tools: ToolService | None
    #: The model gateway; None: no model providers configured (``models.*`` is ``not_available``).
    models: ModelGateway | None

    async def freeze(self, run: Running, reason: str) -> None: ...

    async def thaw(self, run: Running, reason: str) -> dict[str, Any]: ...

    async def store_action(self, run: Running, event: ExecutionAction) -> None: ...


class RunGateway(Protocol):
    """What the protocol server needs of the run's gateway: its run, action numbering, a policy decision
    and the read-your-writes mark (``gateway.ActionGateway`` is the one implementation)."""

    run: Running
    last_write: int

    @property
    def agent(self) -> RunHost: ...

    @property
    def task_id(self) -> str: ...

    def next_seq(self) -> int: ...

    def saw_write(self, sequence: int) -> None: ...

    async def decide(self, question: DecisionRequest) -> tuple[Decision, DecisionRecord]: ...
