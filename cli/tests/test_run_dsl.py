"""An agent written only in the DSL, through the whole runtime as ``symbi up`` + ``symbi run FILE --input …``
run it: ``symbi up`` makes sure the agent image exists (``runtime.agent_image``; here the fixtures' content-tagged
one, which it builds when missing), the lifecycle gives the body the runner's workload in that image, the
scheduler places the task, the sandbox-agent runs the body, whose builtins are actions decided by policy and
recorded, and ``symbi run`` prints the body's value with a verified audit receipt."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions

TALLY = """agent tally(words: String) -> Json {
  capabilities = [memory]
  with sandbox = tier1, timeout = 60s, memory = 128MB, cpu = 0.5, network_io = 0 {
    let parts = words.split(" ")
    let stored = memory.store(words, collection: "notes", tags: ["dsl"])
    let found = recall(words, collection: "notes")
    return {
      count: parts.len(),
      first: parts[0],
      recalled: found.map(m => m.id).contains(stored.memory_id)
    }
  }
}
"""


@pytest.mark.timeout(600)
async def test_symbi_run_runs_a_dsl_body_through_the_runtime(
    runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str, tmp_path: Path
) -> None:
    env = dict(runtime_options.env or {})
    image = env["SYMBI_RUNTIME__AGENT_IMAGE"]
    definition = tmp_path / "tally.symbi"
    definition.write_text(TALLY)
    rt = LocalRuntime(runtime_options)
    try:
        await rt.start()  # builds the agent image unless it is there with this checkout's content
        label = '{{index .Config.Labels "org.symbi.content"}}'
        inspect = await asyncio.to_thread(
            subprocess.run, ["docker", "image", "inspect", "-f", label, image], capture_output=True, check=False
        )
        assert inspect.returncode == 0, f"symbi up did not ensure {image}"
        assert inspect.stdout.strip(), f"{image} carries no content label: not agent-image.sh's"
        await rt.wait_ready(timeout=90)
        proc = await asyncio.create_subprocess_exec(
            symbi_exe, "run", str(definition), "--input", "launch on friday", "--home", str(runtime_home), "--json",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
        assert proc.returncode == 0, err.decode()[-3000:]
        doc = json.loads(out)
    finally:
        await rt.stop()
    # The body ran (not a container of the agent's own): its value is the task's result.
    assert doc["task"]["outcome"] == "succeeded", doc["task"]
    assert json.loads(doc["result"]) == {"count": 3, "first": "launch", "recalled": True}
    assert doc["agent"]["state"] == "Ready"
    # Its builtins were the agent's actions, each decided and recorded on the task's audit trail, which the
    # receipt proves against the signed checkpoint.
    receipt = doc["receipt"]
    assert receipt["verified"] is True
    types = [e["event_type"] for e in receipt["events"]]
    assert types.count("execution.action") == 2, types
    assert "execution.exited" in types, types
    assert types[-1] == "task.completed", types
    assert doc["task"]["task_id"] in {e["subject"].rsplit(".", 1)[-1] for e in receipt["events"]}
