"""The console's lists page through the services' paged APIs against a real runtime: every agent, every
lifecycle event of an agent and every task is reachable by following the "next page" links, exactly once, and the
last page has no such link. A cursor the service did not hand out gives the console's error page (the service's
refusal, or the console's own before any call), never a server error.

The page sizes (``symbi_cli.console.paging``) are lowered here so that a few agents, events and tasks span pages.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from symbi_cli.console import paging
from symbi_cli.console.app import ConsoleConfig, create_app
from symbi_cli.console.pages_runtime import DEFAULT_DEFINITION
from symbi_cli.console.services import service_urls
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.operator_tokens import bearer_header

pytestmark = [pytest.mark.timeout(600)]

#: Base64 of "forged": the form of a cursor, but none the service handed out.
FORGED = "Zm9yZ2Vk"


@dataclass(frozen=True)
class Running:
    #: The services' APIs as the runtime's admin (each call names its service's URL).
    api: httpx.AsyncClient
    #: The console, logged in as that admin.
    console: httpx.AsyncClient
    urls: dict[str, str]


@asynccontextmanager
async def _running(options: RuntimeOptions, home: Path, tmp: Path) -> AsyncIterator[Running]:
    """A runtime, an admin client of its services, and the console (in process) logged in as that admin."""
    rt = LocalRuntime(options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=90)
        urls = service_urls(home, None)
        admin = (home / "operator.token").read_text().strip()
        app = create_app(ConsoleConfig(urls=urls, keys_dir=home / "keys", state_dir=tmp / "console"))
        async with (
            httpx.AsyncClient(headers=bearer_header(admin), timeout=60) as api,
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console") as console,
        ):
            login = await console.post("/login", data={"token": admin})
            assert login.status_code == 303, login.text
            yield Running(api, console, urls)
    finally:
        await rt.stop()


def _definition(version: int) -> str:
    return DEFAULT_DEFINITION.replace('version = "1.0.0"', f'version = "1.0.{version}"')


def _next(page: str, link_id: str) -> str | None:
    """The href of the link with ``link_id`` (None when the page has none)."""
    found = re.search(rf'<a href="([^"]+)" id="{link_id}"', page)
    return html.unescape(found.group(1)) if found else None


async def _page(console: httpx.AsyncClient, path: str) -> str:
    answer = await console.get(path)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:2000])
    return answer.text


async def _refused(console: httpx.AsyncClient, path: str, status: int, says: str) -> None:
    """``path`` answers the console's error page with ``status``, saying ``says``."""
    answer = await console.get(path)
    assert answer.status_code == status, (path, answer.status_code, answer.text[:2000])
    error = re.search(r'id="error">(.*?)</p>', answer.text, flags=re.S)
    assert error, answer.text[:2000]
    assert says in html.unescape(error.group(1)), error.group(1)


async def _register(run: Running, agent_id: str, configured: int = 0) -> int:
    """Register ``agent_id`` (Ready), then configure it ``configured`` times: one lifecycle event each; the
    stream sequence of the last change (``min_sequence`` for a read that must see it)."""
    lifecycle = run.urls["lifecycle"]
    body = {"agent_id": agent_id, "definition": _definition(0), "file": "paged.symbi"}
    registered = await run.api.post(f"{lifecycle}/v1/agents", json=body)
    assert registered.status_code == 201, registered.text
    sequence = int(registered.json()["sequence"])
    for version in range(1, configured + 1):
        changed = await run.api.post(
            f"{lifecycle}/v1/agents/{agent_id}/configure", json={"definition": _definition(version)}
        )
        assert changed.status_code == 200, changed.text
        sequence = int(changed.json()["sequence"])
    return sequence


async def _the_agents_list_pages_through_every_agent_once(run: Running) -> None:
    applied = max([await _register(run, f"paged-{i}") for i in range(7)])
    # Read once the lifecycle's read model has applied every registration (the console's reads follow).
    params = {"limit": 500, "min_sequence": applied}
    every = (await run.api.get(f"{run.urls['lifecycle']}/v1/agents", params=params)).json()
    expected = sorted(a["id"] for a in every["items"])
    assert {f"paged-{i}" for i in range(7)} <= set(expected)

    seen: list[str] = []
    path: str | None = "/agents"
    pages = 0
    while path is not None:
        text = await _page(run.console, path)
        rows = re.findall(r'<td><a href="/agents/([^"]+)">', text)
        assert 0 < len(rows) <= 3, (path, rows)
        seen += rows
        pages += 1
        path = _next(text, "agents-next")
        assert (path is None) == ("the last page" in text)
        assert pages <= len(expected), "the next links do not end"
    assert sorted(seen) == expected  # every agent, none twice
    assert pages == -(-len(expected) // 3)


async def _an_agents_timeline_pages_oldest_first_to_its_latest_event(run: Running) -> None:
    applied = await _register(run, "storied", configured=3)
    path_ = f"{run.urls['lifecycle']}/v1/agents/storied/events"
    history = (await run.api.get(path_, params={"limit": 500, "min_sequence": applied})).json()["items"]
    versions = [e["aggregate_version"] for e in history]
    assert len(versions) >= 4, history

    shown: list[int] = []
    path: str | None = "/agents/storied"
    while path is not None:
        text = await _page(run.console, path)
        on_page = [int(v) for v in re.findall(r"</b> · v(\d+) · seq", text)]
        assert 0 < len(on_page) <= 2, (path, on_page)
        shown += on_page
        found = re.search(r'<a href="([^"]+)" class="timeline-newer"', text)
        path = html.unescape(found.group(1)) if found else None
        assert (path is None) == ("up to the latest event" in text)
        assert len(shown) <= len(versions), "the newer links do not end"
    assert shown == versions  # oldest first, every event once

    newest = re.search(r'<a href="([^"]+)" class="timeline-newest"', await _page(run.console, "/agents/storied"))
    assert newest, "the first page links to the newest events"
    last = await _page(run.console, html.unescape(newest[1]))
    assert [int(v) for v in re.findall(r"</b> · v(\d+) · seq", last)] == versions[-2:]
    assert "up to the latest event" in last
    # Each event of the page carries the audit service's verdict (once it has verified them).
    deadline = time.monotonic() + 60
    while last.count("✔ signature and chain checked by the audit service") < 2:
        assert time.monotonic() < deadline, last
        await asyncio.sleep(0.5)
        last = await _page(run.console, html.unescape(newest[1]))


async def _a_cursor_the_service_did_not_hand_out_gives_the_error_page(run: Running) -> None:
    await _register(run, "one")
    console = run.console
    # The lifecycle's own refusal of a well-formed but forged cursor, shown as the console's error page.
    await _refused(console, f"/agents?cursor={FORGED}", 400, "not a cursor this API returned")
    # Refused by the console before any call: not the form of a cursor or a position.
    await _refused(console, "/agents?cursor=..%2Fv1%2Fagents", 400, "is not a cursor of the agents list")
    for bad in ("-1", "x", "99999999999999999999"):
        await _refused(console, f"/agents/one?after={bad}", 400, "is not a position in the timeline")
    await _refused(console, "/audit?findings_after=1e3", 400, "is not a position in the findings list")
    audit = await _page(console, "/audit")
    assert _next(audit, "findings-next") is None  # no findings in a fresh runtime: one page
    assert "the last page" in audit


async def _each_task_group_pages_with_the_schedulers_cursor(run: Running) -> None:
    api, console, urls = run.api, run.console, run.urls
    body = {"agent_id": "tasked", "definition": DEFAULT_DEFINITION, "file": "tasked.symbi"}
    registered = await api.post(f"{urls['lifecycle']}/v1/agents", json=body)
    assert registered.status_code == 201, registered.text
    submitted = []
    for i in range(5):
        task = {"agent_id": "tasked", "priority": "normal", "input": f"n{i}"}
        answer = await api.post(f"{urls['scheduler']}/v1/tasks", json=task)
        assert answer.status_code == 201, answer.text
        submitted.append(answer.json()["task_id"])
    deadline = time.monotonic() + 240
    while True:
        finished = (await api.get(f"{urls['scheduler']}/v1/tasks", params={"state": "finished"})).json()
        if finished["total"] == len(submitted):
            break
        assert time.monotonic() < deadline, finished
        await asyncio.sleep(0.5)

    seen: list[str] = []
    path: str | None = "/tasks"
    while path is not None:
        text = await _page(console, path)
        table = re.search(r'<table class="tasks" id="tasks-finished">(.*?)</table>', text, flags=re.S)
        assert table, text[:3000]
        rows = re.findall(r'<td><a href="/tasks/([^"]+)">', table.group(1))
        assert 0 < len(rows) <= 2, (path, rows)
        seen += rows
        if path != "/tasks":  # a later page shows its group only, and refreshes that same page
            assert 'id="tasks-queued"' not in text
            live = re.search(r'<div id="tasks-live" hx-get="([^"]+)"', text)
            assert live, text[:3000]
            assert html.unescape(live[1]) == path.replace("/tasks?", "/tasks/live?")
        path = _next(text, "next-finished")
        assert (path is None) == ("the last page of finished" in text)
        assert len(seen) <= len(submitted), "the next links do not end"
    assert sorted(seen) == sorted(submitted)

    await _refused(console, f"/tasks?state=finished&after={FORGED}", 422, "is not a cursor of this listing")
    await _refused(console, "/tasks/live?state=finished&after=a%20b", 400, "is not a cursor of the tasks list")
    await _refused(console, "/tasks?state=parked", 400, "is not a task group")
    await _refused(console, f"/tasks?after={FORGED}", 400, "name its state too")


async def test_every_list_pages_through_everything_once_and_a_forged_cursor_is_refused(
    runtime_options: RuntimeOptions, runtime_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One runtime for the four lists (each starts its own otherwise): the cursors first, while the runtime has
    no audit findings yet; then the agents list, an agent's timeline and the task groups, at small page sizes."""
    monkeypatch.setattr(paging, "AGENTS_PAGE", 3)
    monkeypatch.setattr(paging, "TIMELINE_PAGE", 2)
    monkeypatch.setattr(paging, "TASKS_PAGE", 2)
    async with _running(runtime_options, runtime_home, tmp_path) as run:
        await _a_cursor_the_service_did_not_hand_out_gives_the_error_page(run)
        await _the_agents_list_pages_through_every_agent_once(run)
        await _an_agents_timeline_pages_oldest_first_to_its_latest_event(run)
        await _each_task_group_pages_with_the_schedulers_cursor(run)
