"""Hosts and metrics: capacity and load per host and the queue depths, from the scheduler's status; the page
keeps a short history of them in the browser (it polls the numbers every few seconds)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response

from symbi_cli.console.app import CtxDep

router = APIRouter()


def load_numbers(status: dict[str, Any]) -> dict[str, Any]:
    """What the charts plot: queue depth per priority, running tasks, and each host's used share."""
    hosts = []
    for h in status.get("hosts", []):
        cpu, mem = float(h.get("cpu_cores") or 0), float(h.get("memory_mb") or 0)
        hosts.append(
            {
                "host_id": h.get("host_id"),
                "cpu_used": round(cpu - float(h.get("cpu_free") or 0), 2),
                "cpu": cpu,
                "memory_used_mb": round(mem - float(h.get("memory_free_mb") or 0)),
                "memory_mb": mem,
                "tasks": len(h.get("tasks") or []),
            }
        )
    return {"queues": status.get("queues", {}), "running": len(status.get("running", [])), "hosts": hosts}


@router.get("/hosts", response_class=HTMLResponse)
async def hosts(c: CtxDep) -> Response:
    status = await c.services.get("scheduler", "/v1/status")
    return c.page("hosts.html", status=status, numbers=load_numbers(status))


@router.get("/hosts/numbers")
async def numbers(c: CtxDep) -> Response:
    return JSONResponse(load_numbers(await c.services.get("scheduler", "/v1/status")))
