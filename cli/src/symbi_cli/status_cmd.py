"""``symbi status``: the health of a running local runtime, for people (tables) and scripts (``--json``).

Reads ``<home>/run/state.json`` (written by ``symbi up``) for the pids and addresses; without it, probes
every service at its port from ``--base-port``. Fetching (``/proc``, HTTP) is kept apart from
:func:`build_report`, which turns what was fetched into the report, so the rules deciding "ok",
"degraded" and "down" are plain functions of data. Exit status: 0 when ok, 2 when the audit
service reports its log missing, shorter or rolled back (critical), 1 otherwise.

Per component: pid, whether it lives, RSS and CPU seconds (``/proc/<pid>``; PostgreSQL's figures are
the postmaster's own, not its backends'), each service's readiness checks and recent errors (from
``/readyz``), uptime (``/healthz``) and how often the supervisor restarted it. Then the scheduler's queues, hosts and running tasks
(``GET /v1/status``), agents by state (paging ``GET /v1/agents``) and the audit verifier's position
and findings (``GET /v1/audit/status``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from symbi_cli.errors import CliError
from symbi_cli.runtime_options import DEFAULT_BASE_PORT
from symbi_cli.runtime_state import StatusError, read_state
from symbi_cli.status_probes import (
    AGENT_PAGE,
    HTTP_TIMEOUT,
    MAX_AGENT_PAGES,
    AgentCount,
    HttpAnswer,
    ProcessInfo,
    ServiceProbe,
    Snapshot,
    count_agents,
    fetch_snapshot,
    local_snapshot,
    read_process,
)
from symbi_cli.status_report import (
    DEGRADED,
    DOWN,
    OK,
    RECENT_ERRORS,
    audit_critical,
    build_report,
    overall_status,
    render,
)

#: Re-exported: these lived here before ``symbi status`` was split into probes and report.
__all__ = [
    "AGENT_PAGE",
    "DEGRADED",
    "DOWN",
    "EXIT_CRITICAL",
    "HTTP_TIMEOUT",
    "MAX_AGENT_PAGES",
    "OK",
    "RECENT_ERRORS",
    "AgentCount",
    "HttpAnswer",
    "ProcessInfo",
    "ServiceProbe",
    "Snapshot",
    "StatusError",
    "audit_critical",
    "build_report",
    "count_agents",
    "fetch_snapshot",
    "local_snapshot",
    "overall_status",
    "read_process",
    "read_state",
    "render",
    "status",
]


def status(
    home: Annotated[Path, typer.Option("--home", help="Runtime directory of `symbi up`.", envvar="SYMBI_HOME")] = Path(
        ".symbi"
    ),
    base_port: Annotated[
        int, typer.Option("--base-port", help="Service ports to probe when there is no state file.")
    ] = DEFAULT_BASE_PORT,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Health of every component, queues, hosts, agents by state; exit 0 only when everything is ok."""
    try:
        report = build_report(asyncio.run(fetch_snapshot(home, base_port)))
    except CliError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        render(report, Console())
    if audit_critical(report):
        raise typer.Exit(EXIT_CRITICAL)
    raise typer.Exit(0 if report["status"] == OK else 1)


EXIT_CRITICAL = 2
