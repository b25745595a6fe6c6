"""``symbi status``'s report: the rules deciding "ok", "degraded" and "down" as plain functions of what was
fetched (:class:`~symbi_cli.status_probes.Snapshot`), and the report rendered as tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from symbi_cli.status_probes import AgentCount, HttpAnswer, ProcessInfo, ServiceProbe, Snapshot, as_dict

#: How many recent errors of each service the report shows.
RECENT_ERRORS = 5

OK, DEGRADED, DOWN = "ok", "degraded", "down"


# --- the pure part: the report --------------------------------------------------------------------


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
    ready = as_dict(probe.readyz.body)
    checks = as_dict(ready.get("checks"))
    errors = ready.get("recent_errors")
    errors = errors if isinstance(errors, list) else []
    health = as_dict(probe.healthz.body)
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


def audit_critical(report: Mapping[str, Any]) -> dict[str, str]:
    """The audit service's critical findings (its log missing, shorter or rolled back), if any."""
    audit = report.get("audit") or {}
    critical = audit.get("critical") if isinstance(audit, dict) else None
    return critical if isinstance(critical, dict) else {}
