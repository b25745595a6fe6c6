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
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from symbi_cli.credentials import auth_headers
from symbi_cli.errors import CliError
from symbi_cli.runtime import ALL_SERVICES, DEFAULT_BASE_PORT, SERVICE_PORT_OFFSETS

#: Seconds to wait for any one HTTP answer: a service slower than this counts as not answering.
HTTP_TIMEOUT = 3.0
#: Agents are counted a page of this size at a time (the lifecycle API's largest page) …
AGENT_PAGE = 500
#: … for at most this many pages; beyond that the count is marked as truncated.
MAX_AGENT_PAGES = 200
#: How many recent errors of each service the report shows.
RECENT_ERRORS = 5

OK, DEGRADED, DOWN = "ok", "degraded", "down"


class StatusError(CliError):
    """The runtime's state file cannot be read."""


# --- what is fetched ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as ``/proc`` shows it; ``alive`` is False for a missing or zombie process."""

    pid: int
    alive: bool
    rss_bytes: int | None = None
    cpu_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """One GET: its status and JSON body, or why there was none."""

    status: int | None = None
    body: Any = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None


@dataclass(slots=True)
class ServiceProbe:
    url: str
    process: ProcessInfo | None = None
    #: How often the supervisor restarted the service, and how its previous process ended (state file).
    restarts: int | None = None
    last_exit: str | None = None
    healthz: HttpAnswer = field(default_factory=HttpAnswer)
    readyz: HttpAnswer = field(default_factory=HttpAnswer)


@dataclass(slots=True)
class AgentCount:
    by_state: dict[str, int]
    truncated: bool = False


@dataclass(slots=True)
class Snapshot:
    """Everything ``symbi status`` fetched, before any judgement."""

    home: str
    state_file: bool
    supervisor: ProcessInfo | None = None
    nats: ProcessInfo | None = None
    #: ``None`` with ``postgres_external``: the runtime uses ``SYMBI_DATABASE_URL``.
    postgres: ProcessInfo | None = None
    postgres_external: bool = False
    services: dict[str, ServiceProbe] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    scheduler: HttpAnswer | None = None
    agents: AgentCount | HttpAnswer | None = None
    audit: HttpAnswer | None = None


# --- the pure part: the report --------------------------------------------------------------------


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _resources(info: ProcessInfo | None) -> dict[str, Any]:
    if info is None:
        return {"pid": None, "alive": None, "rss_mb": None, "cpu_s": None}
    return {
        "pid": info.pid,
        "alive": info.alive,
        "rss_mb": None if info.rss_bytes is None else round(info.rss_bytes / 2**20, 1),
        "cpu_s": None if info.cpu_seconds is None else round(info.cpu_seconds, 2),
    }


def _infra_component(name: str, info: ProcessInfo | None, *, external: bool = False) -> dict[str, Any]:
    if external:
        status, detail = OK, "external (SYMBI_DATABASE_URL)"
    elif info is None:
        status, detail = DOWN, "not recorded in the state file"
    elif info.alive:
        status, detail = OK, "running"
    else:
        status, detail = DOWN, f"pid {info.pid} is not running"
    return {"name": name, "kind": "process", "status": status, "detail": detail, **_resources(info)}


def _service_component(name: str, probe: ServiceProbe) -> dict[str, Any]:
    ready = _dict(probe.readyz.body)
    checks = _dict(ready.get("checks"))
    errors = ready.get("recent_errors")
    errors = errors if isinstance(errors, list) else []
    health = _dict(probe.healthz.body)
    if probe.readyz.status == 200:
        status, detail = OK, "ready"
    elif probe.readyz.answered:
        failing = sorted(k for k, v in checks.items() if not v)
        status, detail = DEGRADED, "not ready" + (f": {', '.join(failing)}" if failing else "")
    elif probe.process is not None and not probe.process.alive:
        status, detail = DOWN, f"pid {probe.process.pid} is not running"
    else:
        status, detail = DOWN, f"not answering: {probe.readyz.error or 'no reply'}"
    if probe.restarts:
        detail += f"; restarted {probe.restarts}x" + (f" (last: {probe.last_exit})" if probe.last_exit else "")
    return {
        "name": name,
        "kind": "service",
        "url": probe.url,
        "status": status,
        "detail": detail,
        "checks": checks,
        "recent_errors": [str(e) for e in errors[-RECENT_ERRORS:]],
        "uptime_s": health.get("uptime_s"),
        "restarts": probe.restarts,
        "last_exit": probe.last_exit,
        **_resources(probe.process),
    }


def _section(answer: HttpAnswer | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The fields ``keys`` of a status body, or ``{"error": …}`` when it could not be had."""
    if answer is None:
        return None
    if answer.status == 200 and isinstance(answer.body, dict):
        return {k: answer.body.get(k) for k in keys}
    return {"error": answer.error or f"HTTP {answer.status}"}


def _agents(agents: AgentCount | HttpAnswer | None) -> dict[str, Any] | None:
    if agents is None:
        return None
    if isinstance(agents, HttpAnswer):
        return {"error": agents.error or f"HTTP {agents.status}"}
    return {
        "total": sum(agents.by_state.values()),
        "by_state": dict(sorted(agents.by_state.items())),
        "truncated": agents.truncated,
    }


def overall_status(components: list[dict[str, Any]]) -> str:
    """``down`` when no service answers, ``degraded`` when any component is not ok, else ``ok``."""
    services = [c for c in components if c["kind"] == "service"]
    if not services or all(c["status"] == DOWN for c in services):
        return DOWN
    return OK if all(c["status"] == OK for c in components) else DEGRADED


def build_report(snapshot: Snapshot) -> dict[str, Any]:
    """The status report: overall status, each component, the problems by name, queues, agents, audit."""
    components: list[dict[str, Any]] = []
    if snapshot.state_file:
        components.append(_infra_component("supervisor", snapshot.supervisor))
        components.append(_infra_component("nats-server", snapshot.nats))
        components.append(_infra_component("postgresql", snapshot.postgres, external=snapshot.postgres_external))
    components.extend(_service_component(name, probe) for name, probe in snapshot.services.items())
    overall = overall_status(components)
    return {
        "status": overall,
        "home": snapshot.home,
        "state_file": snapshot.state_file,
        "components": components,
        "problems": [f"{c['name']}: {c['detail']}" for c in components if c["status"] != OK],
        "skipped": dict(snapshot.skipped),
        "scheduler": _section(snapshot.scheduler, ("queues", "parked", "hosts", "running", "leader", "synced")),
        "agents": _agents(snapshot.agents),
        "audit": _section(snapshot.audit, ("sequence", "tree_size", "findings", "checkpoint", "critical")),
    }


# --- fetching -----------------------------------------------------------------------------------


def read_process(pid: int, proc: Path = Path("/proc")) -> ProcessInfo:
    """RSS and CPU time (user + system) of ``pid``; a zombie or vanished process is not alive."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return ProcessInfo(pid=pid, alive=False)
    # Fields after the command name, which is in parentheses and may itself contain spaces.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return ProcessInfo(pid=pid, alive=False)
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    rss = None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return ProcessInfo(pid=pid, alive=True, rss_bytes=rss, cpu_seconds=cpu)


def _pid(entry: object) -> int | None:
    pid = entry.get("pid") if isinstance(entry, dict) else None
    return pid if isinstance(pid, int) else None


def _process(entry: object) -> ProcessInfo | None:
    pid = _pid(entry)
    return None if pid is None else read_process(pid)


def read_state(home: Path) -> dict[str, Any] | None:
    path = home / "run" / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StatusError(f"cannot read {path}: {exc}") from None
    if not isinstance(state, dict):
        raise StatusError(f"{path} is not a JSON object")
    return state


async def _get(http: httpx.AsyncClient, url: str, params: Mapping[str, str | int] | None = None) -> HttpAnswer:
    try:
        response = await http.get(url, params=params)
    except httpx.HTTPError as exc:
        return HttpAnswer(error=str(exc) or type(exc).__name__)
    try:
        body = response.json()
    except ValueError:
        body = None
    return HttpAnswer(status=response.status_code, body=body)


async def count_agents(http: httpx.AsyncClient, lifecycle_url: str) -> AgentCount | HttpAnswer:
    """Agents by state, paging the lifecycle API; the failed answer if a page could not be had."""
    counts: Counter[str] = Counter()
    cursor: str | None = None
    for _ in range(MAX_AGENT_PAGES):
        params: dict[str, str | int] = {"limit": AGENT_PAGE}
        if cursor:
            params["cursor"] = cursor
        answer = await _get(http, f"{lifecycle_url}/v1/agents", params)
        if answer.status != 200 or not isinstance(answer.body, dict):
            return answer
        counts.update(str(item.get("state")) for item in answer.body.get("items", []))
        cursor = answer.body.get("next_cursor")
        if not cursor:
            return AgentCount(by_state=dict(counts))
    return AgentCount(by_state=dict(counts), truncated=True)


async def _probe(http: httpx.AsyncClient, probe: ServiceProbe) -> None:
    probe.healthz, probe.readyz = await asyncio.gather(
        _get(http, f"{probe.url}/healthz"), _get(http, f"{probe.url}/readyz")
    )


def local_snapshot(home: Path, base_port: int, host: str) -> Snapshot:
    """What this machine says: the state file and each recorded process in ``/proc``; services not yet probed."""
    home = home.resolve()
    state = read_state(home)
    snapshot = Snapshot(home=str(home), state_file=state is not None)
    if state is None:
        for name in ALL_SERVICES:
            snapshot.services[name] = ServiceProbe(url=f"http://{host}:{base_port + SERVICE_PORT_OFFSETS[name]}")
    else:
        snapshot.supervisor = _process({"pid": state.get("supervisor_pid")})
        snapshot.nats = _process(state.get("nats"))
        snapshot.postgres = _process(state.get("postgres"))
        snapshot.postgres_external = state.get("postgres") is None
        for name, entry in _dict(state.get("services")).items():
            url = entry.get("url") if isinstance(entry, dict) else None
            if not isinstance(url, str):
                raise StatusError(f"{home / 'run' / 'state.json'}: service {name!r} has no url")
            restarts, last_exit = entry.get("restarts"), entry.get("last_exit")
            snapshot.services[name] = ServiceProbe(
                url=url.rstrip("/"),
                process=_process(entry),
                restarts=restarts if isinstance(restarts, int) else None,
                last_exit=last_exit if isinstance(last_exit, str) else None,
            )
        unavailable = state.get("unavailable")
        if isinstance(unavailable, dict):
            snapshot.skipped.update({str(k): str(v) for k, v in unavailable.items()})

    return snapshot


async def fetch_snapshot(home: Path, base_port: int = DEFAULT_BASE_PORT, host: str = "127.0.0.1") -> Snapshot:
    """Everything the report needs: the state file, ``/proc`` and each service's HTTP answers."""
    snapshot = await asyncio.to_thread(local_snapshot, home, base_port, host)
    try:  # health needs no credential; the agent count and the scheduler's status do
        headers = auth_headers(home)
    except CliError:
        headers = {}
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, headers=headers) as http:
        await asyncio.gather(*(_probe(http, p) for p in snapshot.services.values()))

        async def scheduler() -> None:
            if (p := snapshot.services.get("scheduler")) and p.readyz.answered:
                snapshot.scheduler = await _get(http, f"{p.url}/v1/status")

        async def agents() -> None:
            if (p := snapshot.services.get("lifecycle")) and p.readyz.answered:
                snapshot.agents = await count_agents(http, p.url)

        async def audit() -> None:
            if (p := snapshot.services.get("audit")) and p.readyz.answered:
                snapshot.audit = await _get(http, f"{p.url}/v1/audit/status")

        await asyncio.gather(scheduler(), agents(), audit())
    # A service that does not answer at all and is not in the state file was most likely never started.
    if not snapshot.state_file and any(p.readyz.answered for p in snapshot.services.values()):
        for name in [n for n, p in snapshot.services.items() if not p.readyz.answered]:
            snapshot.skipped[name] = "not answering, and no state file says it should run"
            del snapshot.services[name]
    return snapshot


# --- output -------------------------------------------------------------------------------------

_STYLE = {OK: "green", DEGRADED: "yellow", DOWN: "red"}


def _fmt(value: object, suffix: str = "") -> str:
    return "" if value is None else f"{value}{suffix}"


def render(report: Mapping[str, Any], console: Console) -> None:
    """The report as tables: components, then queues and hosts, running tasks, agents, audit."""
    overall = report["status"]
    console.print(f"symbi runtime ({report['home']}): [bold {_STYLE[overall]}]{overall}[/]")
    if not report["state_file"]:
        console.print("[dim]no state file (is `symbi up` running from this --home?); probed the default ports[/]")

    table = Table(title="components")
    for column in ("component", "status", "pid", "RSS MB", "CPU s", "uptime s", "detail"):
        table.add_column(column, justify="right" if column in ("pid", "RSS MB", "CPU s", "uptime s") else "left")
    for c in report["components"]:
        status = f"[{_STYLE[c['status']]}]{c['status']}[/]"
        table.add_row(
            c["name"], status, _fmt(c["pid"]), _fmt(c["rss_mb"]), _fmt(c["cpu_s"]), _fmt(c.get("uptime_s")), c["detail"]
        )
    for name, why in report["skipped"].items():
        table.add_row(name, "[dim]skipped[/]", "", "", "", "", why)
    console.print(table)

    errors = [(c["name"], e) for c in report["components"] for e in c.get("recent_errors", [])]
    if errors:
        err_table = Table(title="recent errors")
        err_table.add_column("service")
        err_table.add_column("error")
        for name, text in errors:
            err_table.add_row(name, text)
        console.print(err_table)

    scheduler = report["scheduler"]
    if scheduler is not None and "error" in scheduler:
        console.print(f"scheduler status: [red]{scheduler['error']}[/]")
    elif scheduler is not None:
        queues = scheduler.get("queues") or {}
        parts = [f"{k}={v}" for k, v in sorted(queues.items())] if isinstance(queues, dict) else [str(queues)]
        console.print(f"queues: {', '.join(parts) or 'empty'}; parked: {scheduler.get('parked')}")
        hosts = Table(title="hosts")
        for column in ("host", "alive", "tiers", "CPU free", "memory free MB", "tasks", "heartbeat age s"):
            hosts.add_column(column)
        for h in scheduler.get("hosts") or []:
            hosts.add_row(
                str(h.get("host_id")),
                str(h.get("alive")),
                ",".join(h.get("tiers") or []),
                f"{h.get('cpu_free')}/{h.get('cpu_cores')}",
                f"{h.get('memory_free_mb')}/{h.get('memory_mb')}",
                _fmt(h.get("tasks")),
                _fmt(h.get("heartbeat_age_s")),
            )
        console.print(hosts if hosts.row_count else "hosts: none")
        console.print(f"running tasks: {len(scheduler.get('running') or [])}")
        for r in scheduler.get("running") or []:
            console.print(f"  {r.get('task_id')} agent {r.get('agent_id')} on {r.get('host_id')}")

    agents = report["agents"]
    if agents is not None and "error" in agents:
        console.print(f"agents: [red]{agents['error']}[/]")
    elif agents is not None:
        by_state = ", ".join(f"{k} {v}" for k, v in agents["by_state"].items()) or "none"
        more = " (and more: count stopped)" if agents["truncated"] else ""
        console.print(f"agents: {agents['total']}{more} — {by_state}")

    audit = report["audit"]
    if audit is not None and "error" in audit:
        console.print(f"audit: [red]{audit['error']}[/]")
    elif audit is not None:
        checkpoint = audit.get("checkpoint") or {}
        console.print(
            f"audit: verified to sequence {audit.get('sequence')}, tree size {audit.get('tree_size')}, "
            f"findings {audit.get('findings')}, latest checkpoint size {checkpoint.get('size', 'none')}"
        )
        for kind, reason in (audit.get("critical") or {}).items():
            console.print(f"[bold red]CRITICAL audit log {kind}:[/] {reason}", highlight=False, soft_wrap=True)


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


def audit_critical(report: Mapping[str, Any]) -> dict[str, str]:
    """The audit service's critical findings (its log missing, shorter or rolled back), if any."""
    audit = report.get("audit") or {}
    critical = audit.get("critical") if isinstance(audit, dict) else None
    return critical if isinstance(critical, dict) else {}
