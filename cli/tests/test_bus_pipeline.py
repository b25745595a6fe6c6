"""The two-agent pipeline of examples/agents/pipeline end to end: a real ``symbi up`` runtime (six services,
nats-server, PostgreSQL, Docker), each agent started with ``symbi run`` from its JSON configuration.

The collector runs first and sends its findings to the summariser, which is not running yet: they wait in its
inbox. Then the summariser runs, receives them in order and prints its summary. Each agent's own policy is
enforced (the collector may send to the summariser only, the summariser may not send at all), and each run
ends with a verified audit receipt.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
import pytest
from symbi_cli.events import operator_url
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.bus_names import MESSAGES_STREAM
from symbi_common.bus_streams import inbox_metadata, inbox_name
from symbi_common.nats_client import server_options
from symbi_fixtures.agent_images import build_agent_image

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "examples" / "agents" / "pipeline"
TEXT = "The disk on db-2 is 91% full. Backups of db-2 failed twice! Who owns db-2?"


def agent_image() -> str:
    """The agent image with this tree's SDK (the examples name ``symbi/agent-python:1``)."""
    return build_agent_image()


def with_image(name: str, image: str, into: Path) -> Path:
    config = json.loads((PIPELINE / f"{name}.json").read_text())
    config["workload"]["image"] = image
    path = into / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


async def symbi_run(symbi_exe: str, env: dict[str, str], home: Path, *args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        symbi_exe,
        "run",
        *args,
        "--home",
        str(home),
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, err.decode()[-3000:]
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.mark.timeout(600)
async def test_the_collector_and_the_summariser_talk_through_the_bus(
    runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str, tmp_path: Path
) -> None:
    image = await asyncio.to_thread(agent_image)
    collector, summariser = (with_image(n, image, tmp_path) for n in ("collector", "summariser"))
    env = dict(runtime_options.env or {})
    rt = LocalRuntime(runtime_options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=90)
        sent = await symbi_run(symbi_exe, env, runtime_home, str(collector), "--id", "collector", "--input", TEXT)
        assert sent["task"]["outcome"] == "succeeded"
        result = json.loads(sent["result"])
        assert result["sent"] == 3
        assert result["to_archive"].startswith("denied by ")  # its own policy: the summariser only
        assert sent["receipt"]["verified"] is True

        summary_doc = await symbi_run(symbi_exe, env, runtime_home, str(summariser), "--id", "summariser")
        assert summary_doc["task"]["outcome"] == "succeeded"
        summary = json.loads(summary_doc["result"])
        assert summary["from"] == ["collector"]
        assert (summary["findings"], summary["complete"]) == (3, True)
        assert summary["first"] == "The disk on db-2 is 91% full"  # in the order sent
        assert summary["answer"].startswith("denied by ")  # its own policy: it only listens
        assert summary_doc["receipt"]["verified"] is True
        # The summariser's messaging block went from its definition through task.assigned to its host, which
        # declared it on its inbox.
        nc = await nats.connect(**server_options(operator_url(runtime_home)))
        try:
            info = await nc.jetstream().consumer_info(MESSAGES_STREAM, inbox_name("summariser"))
        finally:
            await nc.close()
        assert inbox_metadata(200, ["internal"]).items() <= (info.config.metadata or {}).items()
    finally:
        await rt.stop()
