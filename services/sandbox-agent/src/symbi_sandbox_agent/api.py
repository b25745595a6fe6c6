"""The sandbox-agent's interfaces: HTTP ``GET /v1/host`` and the commands
``cmd.sandbox-agent.<host_id>.suspend|resume|terminate`` with ``{"task_id": …}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from symbi_common.commands import CommandMeta, CommandServer
from symbi_common.telemetry import continue_trace
from symbi_contracts.sandbox_agent.commands import TaskRef

from symbi_sandbox_agent.application import SandboxService
from symbi_sandbox_agent.host import SandboxHost

router = APIRouter()


@router.get("/v1/host", summary="This host: capacity, tiers, heartbeat, running sandboxes, last reconciliation")
async def host_status(request: Request) -> dict[str, Any]:
    host: SandboxHost = request.app.state.sandbox
    return host.status()


def register_commands(server: CommandServer, service: SandboxService) -> None:
    """Each command runs as a span of the trace its request carries (the scheduler's), so the execution
    events it appends continue the task's trace."""

    def traced(action: str, handler: Callable[[str], Awaitable[dict[str, Any]]]) -> Any:
        async def run(req: TaskRef, meta: CommandMeta) -> dict[str, Any]:
            with continue_trace(f"sandbox.{action}", meta.headers, attributes={"symbi.task_id": req.task_id}):
                return await handler(req.task_id)

        return run

    server.register("suspend", TaskRef, traced("suspend", service.suspend))
    server.register("resume", TaskRef, traced("resume", service.resume))
    server.register("terminate", TaskRef, traced("terminate", service.terminate))
