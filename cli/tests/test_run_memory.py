"""``symbi run`` remembers what it can: an empty output is not stored, a long one is stored truncated with its
digest, and the run still ends with its receipt."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
from symbi_cli.credentials import auth_headers
from symbi_cli.run_memory import MEMORY_MAX_CHARS, result_memory, result_memory_id
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions

AGENT = """agent {name}(x: String) -> String {{
  version = "1.0.0"
  description = "prints {what}"
  capabilities = [text.generate]
  workload = {{image: "symbi/busybox:1", command: ["sh", "-c", "{command}"]}}

  with sandbox = tier1, timeout = 30s, memory = 256MB, cpu = 0.5, network_io = 0 {{}}
}}
"""
LONG = 100_000


def test_result_memory_keeps_short_skips_empty_truncates_long() -> None:
    assert result_memory("") is None
    assert result_memory(" \n\t") is None
    assert result_memory("hello") == ("hello", {})
    long = "ab" * LONG
    text, meta = result_memory(long)  # type: ignore[misc]
    assert len(text) == MEMORY_MAX_CHARS
    assert long.startswith(text.split("\n[… truncated")[0])
    assert meta == {
        "truncated": True,
        "result_chars": 2 * LONG,
        "result_sha256": hashlib.sha256(long.encode()).hexdigest(),
    }
    assert f"of {2 * LONG} characters" in text


async def _run(symbi_exe: str, file: Path, home: Path, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    proc = await asyncio.create_subprocess_exec(
        symbi_exe, "run", str(file), "--input", "x", "--home", str(home), "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    doc: dict = json.loads(out)  # type: ignore[type-arg]
    assert doc["receipt"]["verified"] is True
    return doc


async def test_run_finishes_with_its_receipt_whatever_the_output_size(
    runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str, tmp_path: Path
) -> None:
    silent = tmp_path / "silent.symbi"
    silent.write_text(AGENT.format(name="silent_agent", what="nothing", command="read x; true"))
    chatty = tmp_path / "chatty.symbi"
    chatty.write_text(AGENT.format(name="chatty_agent", what="a lot", command=f"read x; yes y | head -c {LONG}"))
    env = dict(runtime_options.env or {})
    rt = LocalRuntime(runtime_options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=60)
        doc = await _run(symbi_exe, silent, runtime_home, env)
        assert doc["result"] == ""
        assert doc["memory"] == {"skipped": "the task printed nothing; no memory stored"}

        doc = await _run(symbi_exe, chatty, runtime_home, env)
        assert doc["result"] == "y\n" * (LONG // 2)
        assert doc["memory"]["truncated"] == {"kept_chars": MEMORY_MAX_CHARS, "result_chars": LONG}
        async with httpx.AsyncClient(timeout=10, headers=auth_headers(runtime_home)) as http:
            query = {"agent_id": doc["agent"]["id"], "query": "yyyy", "min_sequence": doc["memory"]["sequence"]}
            r = await http.post(f"{rt.url_of('context')}/v1/memories/query", json=query)
            assert r.status_code == 200, r.text
            hit = next(h for h in r.json()["results"] if h["id"] in doc["memory"]["ids"])
            assert hit["metadata"]["result_chars"] == LONG
            assert hit["metadata"]["result_sha256"] == hashlib.sha256(b"y\n" * (LONG // 2)).hexdigest()
    finally:
        await rt.stop()


def test_a_tasks_result_memory_has_one_id_so_storing_it_again_stores_it_once() -> None:
    first = result_memory_id("agent-1", "task-9")
    assert first == result_memory_id("agent-1", "task-9")
    assert first != result_memory_id("agent-1", "task-10")
    assert first != result_memory_id("agent-2", "task-9")
    assert all(c.isalnum() or c == "-" for c in first)  # the context service's id alphabet
