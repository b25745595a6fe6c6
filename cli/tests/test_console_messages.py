"""The agent page's messages against a real runtime: the collector of examples/agents/pipeline sends over the
bus (``symbi run``), and the console (in process, talking to the services over HTTP) shows its bus actions
only once the policy lets the operator read them — before that they stay withheld and are only counted."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from symbi_cli.console.app import ConsoleConfig, create_app
from symbi_cli.console.services import service_urls
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.operator_tokens import bearer_header
from symbi_fixtures.agent_images import build_agent_image

pytestmark = [pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
TEXT = "The disk on db-2 is 91% full. Backups of db-2 failed twice! Who owns db-2?"
WITHHELD = re.compile(r'id="messages-withheld">(\d+) gateway action')


def _messages_section(page: str) -> str:
    start = page.find('<div id="agent-messages">')
    return page[start : page.find("</div>", start)] if start >= 0 else page[:3000]


async def _until(
    what: str, check: Callable[[], Awaitable[str | None]], last: Callable[[], str], timeout: float = 90
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s; the section: {_messages_section(last())}"
        await asyncio.sleep(0.25)


async def test_bus_actions_are_withheld_until_the_policy_lets_the_operator_read_them(
    runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str, tmp_path: Path
) -> None:
    image = await asyncio.to_thread(build_agent_image)
    config = json.loads((REPO / "examples" / "agents" / "pipeline" / "collector.json").read_text())
    config["workload"]["image"] = image
    collector = tmp_path / "collector.json"
    collector.write_text(json.dumps(config))
    rt = LocalRuntime(runtime_options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=90)
        run = await asyncio.create_subprocess_exec(
            symbi_exe, "run", str(collector), "--id", "collector", "--input", TEXT, "--home", str(runtime_home),
            "--json", env=runtime_options.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(run.communicate(), timeout=180)
        assert run.returncode == 0, err.decode()[-3000:]
        assert json.loads(out)["task"]["outcome"] == "succeeded"

        urls = service_urls(runtime_home, None)
        app = create_app(ConsoleConfig(urls=urls, keys_dir=runtime_home / "keys", state_dir=tmp_path / "console"))
        admin = (runtime_home / "operator.token").read_text().strip()
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console") as console,
        ):
            login = await console.post("/login", data={"token": admin})
            assert login.status_code == 303, login.text

            seen = [""]

            async def page() -> str:
                response = await console.get("/agents/collector")
                assert response.status_code == 200, response.text
                seen[0] = response.text
                return response.text

            # Under the baseline policy an operator may not read execution payloads: the actions are counted.
            async def withheld() -> str | None:
                match = WITHHELD.search(await page())
                return match.group(1) if match and int(match.group(1)) >= 5 else None

            assert int(await _until("the collector's actions counted as withheld", withheld, lambda: seen[0])) >= 5
            assert 'class="message"' not in await page()

            # A policy that lets this operator read the execution events' payloads (data.read on Data::…).
            cedar = 'permit(principal == User::"local-admin", action == Action::"data.read", resource is Data);'
            async with httpx.AsyncClient(headers=bearer_header(admin), timeout=60) as http:
                body = {"set_id": "console-readers", "cedar": cedar}
                registered = await http.post(urls["policy"] + "/v1/policy-sets", json=body)
            assert registered.status_code == 201, registered.text

            async def shown() -> str | None:
                text = await page()
                return text if text.count('class="message"') >= 5 else None

            text = await _until("the collector's bus actions shown", shown, lambda: seen[0])
            rows = re.findall(r'<tr class="message">(.*?)</tr>', text, flags=re.S)
            sends = [r for r in rows if "message.send" in r]
            assert len(sends) == 5  # three findings and the "done" note to the summariser, one refused to the archive
            assert any("summariser" in r and "allowed" in r and "internal" in r for r in sends)
            refused = [r for r in sends if "archive" in r]
            assert refused
            assert "refused" in refused[0]
            assert "collector-sends-to-the-summariser-only" in refused[0]
            assert "messages-withheld" not in text
            assert "91% full" not in text  # bodies are never in the trail
    finally:
        await rt.stop()
