"""The sandbox-agent's interfaces: HTTP ``GET /v1/host`` and the commands
``cmd.sandbox-agent.<host_id>.suspend|resume|terminate`` with ``{"task_id": …}``."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from symbi_common.commands import CommandMeta, CommandServer

from symbi_sandbox_agent.agent import SandboxAgent

router = APIRouter()


@router.get("/v1/host", summary="This host: capacity, tiers, heartbeat, running sandboxes, last reconciliation")
async def host_status(request: Request) -> dict[str, Any]:
    agent: SandboxAgent = request.app.state.sandbox
    return agent.status()


class TaskRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    task_id: str


def register_commands(server: CommandServer, agent: SandboxAgent) -> None:
    async def suspend(req: TaskRef, meta: CommandMeta) -> dict[str, Any]:
        return await agent.suspend(req.task_id)

    async def resume(req: TaskRef, meta: CommandMeta) -> dict[str, Any]:
        return await agent.resume(req.task_id)

    async def terminate(req: TaskRef, meta: CommandMeta) -> dict[str, Any]:
        return await agent.terminate(req.task_id)

    server.register("suspend", TaskRef, suspend)
    server.register("resume", TaskRef, resume)
    server.register("terminate", TaskRef, terminate)
