"""What ``symbi status`` fetches, before any judgement: the state file, each recorded process in ``/proc``
and each service's HTTP answers (``/healthz``, ``/readyz``, the scheduler's and audit service's status,
agents by state).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from symbi_cli.credentials import auth_headers
from symbi_cli.errors import CliError
from symbi_cli.runtime_options import ALL_SERVICES, DEFAULT_BASE_PORT, SERVICE_PORT_OFFSETS
from symbi_cli.runtime_state import StatusError, read_state
from symbi_cli.service_http import service_url, verify

#: Seconds to wait for any one HTTP answer: a service slower than this counts as not answering.
HTTP_TIMEOUT = 3.0
#: Agents are counted a page of this size at a time (the lifecycle API's largest page) …
AGENT_PAGE = 500
#: … for at most this many pages; beyond that the count is marked as truncated.
MAX_AGENT_PAGES = 200


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


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


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
    """What this machine says: the state file and each recorded process in ``/proc``; services not yet probed
    (without a state file: at ``host:base + offset``, over HTTPS for a deployment directory)."""
    home = home.resolve()
    state = read_state(home)
    snapshot = Snapshot(home=str(home), state_file=state is not None)
    if state is None:
        for name in ALL_SERVICES:
            snapshot.services[name] = ServiceProbe(
                url=service_url(base_port + SERVICE_PORT_OFFSETS[name], home, host=host)
            )
    else:
        snapshot.supervisor = _process({"pid": state.get("supervisor_pid")})
        snapshot.nats = _process(state.get("nats"))
        snapshot.postgres = _process(state.get("postgres"))
        snapshot.postgres_external = state.get("postgres") is None
        for name, entry in as_dict(state.get("services")).items():
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
    # A deployment's services are reached over HTTPS and must show a certificate of its CA.
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, headers=headers, verify=verify(home)) as http:
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
