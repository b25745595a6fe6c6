"""``symbi run``'s calls to the services: their URLs, the HTTP requests and the agent's registration.

A service that cannot be reached or refuses a request raises :class:`RunError`, whose message says which
call failed and why.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from symbi_common.errors import SymbiError

from symbi_cli.agent_cmd import registration_body
from symbi_cli.service_http import service_urls as base_urls

POLL_S = 0.25


class RunError(SymbiError):
    """A step of ``symbi run`` failed (registration refused, a service unreachable or refusing)."""

    code = "run_failed"


@dataclass(frozen=True, slots=True)
class ServiceUrls:
    lifecycle: str
    scheduler: str
    audit: str
    context: str


def service_urls(home: Path, base_port: int | None) -> ServiceUrls:
    """The services' URLs: from ``symbi up``'s state file, or ``127.0.0.1:<base + offset>`` in the home's
    scheme (:func:`symbi_cli.service_http.service_urls`)."""
    urls = base_urls(home, base_port)
    return ServiceUrls(urls["lifecycle"], urls["scheduler"], urls["audit"], urls["context"])


async def request(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return await http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise RunError(f"cannot reach {url} ({exc}); is `symbi up` running?") from exc


def json_body(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400 or not isinstance(body, dict):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") if isinstance(error, dict) else None
        raise RunError(f"{what} refused ({response.status_code}): {message or response.text[:300]}")
    return body


async def register_agent(http: httpx.AsyncClient, urls: ServiceUrls, file: Path, agent_id: str) -> dict[str, Any]:
    """Register the agent; it must come out Ready (policies compiled and activated)."""
    body = registration_body(file, agent_id)
    agent = json_body(await request(http, "POST", f"{urls.lifecycle}/v1/agents", json=body), "registration")
    if agent.get("state") != "Ready":
        problems = "; ".join(str(e.get("message", e)) for e in agent.get("errors", []) if isinstance(e, dict))
        raise RunError(f"agent {agent.get('id')} is {agent.get('state')}, not Ready: {problems or 'no reason given'}")
    return agent


async def agent_ready(http: httpx.AsyncClient, urls: ServiceUrls, agent_id: str, timeout: float) -> dict[str, Any]:
    """The agent once it is Ready again after its task (or as it is when ``timeout`` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        agent = json_body(await request(http, "GET", f"{urls.lifecycle}/v1/agents/{agent_id}"), "agent lookup")
        if agent.get("state") == "Ready" or time.monotonic() > deadline:
            return agent
        await asyncio.sleep(POLL_S)
