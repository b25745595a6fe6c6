"""The NATS CLI (natscli v0.5.0, built by ``deploy/host/tools.sh``) runs the commands of docs/operators.md
("Reading the streams with the NATS CLI") against a whole runtime, with the operator's credentials from
``<home>/run/nats-operator.url``, exactly as an operator would.

One ``symbi run`` of ``hello.symbi`` with a unique input stores events of an agent, a task, its execution and
a memory. Every command prints what the docs say (stream configuration and state, each stored event's subject,
sequence and clear headers, the sealed envelope, a data key record sealed to each entitled reader) and
nothing they say it hides: the input and the result appear in no output, as the payloads are encrypted.
A live ``nats sub --stream EVENTS 'evt.>' --new`` started before the run sees the run's events as they are
stored; the plain ``nats sub 'evt.>'`` is refused with the reason the docs give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from pathlib import Path

import msgspec
import pytest
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.datakeys import DataKeyRecord
from symbi_common.entitlements import AGGREGATE_READERS
from symbi_common.keyring import KeyRegistry

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "agents" / "hello.symbi"
OPERATORS_DOC = REPO / "docs" / "operators.md"
# A first-time build of natscli (about 4 minutes on two cores) happens inside the session fixture; once cached
# the test takes about 40 s.
pytestmark = pytest.mark.timeout(900)


def documented_commands() -> list[str]:
    """The ``nats …`` command lines of the docs' section, without their comments."""
    text = OPERATORS_DOC.read_text()
    section = text.split("## Reading the streams with the NATS CLI", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("nats ")]


def test_the_docs_show_the_commands_this_test_runs() -> None:
    assert documented_commands() == [
        "nats stream info EVENTS",
        "nats sub --stream EVENTS 'evt.>' --all --headers-only -T",
        "nats sub --stream EVENTS 'evt.>' --new",
        "nats stream get EVENTS 1",
        "nats kv get DATAKEYS agent.<agent id>",
    ]


async def run_nats(nats_cli: Path, env: dict[str, str], *args: str, ok: bool = True) -> bytes:
    """``nats <args>``; its stdout and stderr together, as bytes (payloads are binary)."""
    proc = await asyncio.create_subprocess_exec(
        str(nats_cli), *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    shown = output.decode(errors="replace")
    if ok:
        assert proc.returncode == 0, f"nats {' '.join(args)} exited {proc.returncode}: {shown}"
    else:
        assert proc.returncode != 0, f"nats {' '.join(args)} should have failed: {shown}"
    return output


COMPLETED = b"Symbi-Event-Type: task.completed"


async def follow_until(follower: asyncio.subprocess.Process, *wanted: bytes, timeout: float) -> bytes:
    """What a running ``nats sub`` printed up to the moment its output holds every one of ``wanted``; fails
    after ``timeout`` s with what it did print."""
    assert follower.stdout is not None
    seen = b""
    deadline = asyncio.get_running_loop().time() + timeout
    while not all(w in seen for w in wanted):
        left = deadline - asyncio.get_running_loop().time()
        chunk = b""
        if left > 0:
            with contextlib.suppress(TimeoutError):
                chunk = await asyncio.wait_for(follower.stdout.read(65536), timeout=left)
        assert chunk, f"the follower did not print {wanted} within {timeout} s: {seen[-2000:]!r}"
        seen += chunk
    return seen


async def test_documented_nats_cli_commands_show_metadata_and_hide_payloads(
    runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str, nats_cli: Path, tmp_path: Path
) -> None:
    marker = f"natscli-{uuid.uuid4().hex}"
    async with LocalRuntime(runtime_options) as rt:
        await rt.wait_ready(timeout=60)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),  # natscli keeps its contexts under the home; not the user's
            "NATS_URL": (runtime_home / "run" / "nats-operator.url").read_text().strip(),
        }
        follower = await asyncio.create_subprocess_exec(
            str(nats_cli), "sub", "--stream", "EVENTS", "evt.>", "--new", env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                symbi_exe, "run", str(HELLO), "--input", marker, "--home", str(runtime_home), "--json",
                env=runtime_options.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
            assert proc.returncode == 0, err.decode()
            doc = json.loads(out)
            agent_id, task_id = doc["agent"]["id"], doc["task"]["task_id"]
            assert marker in json.dumps(doc)  # the result names the input: it really went through the events
            # The follower prints what was stored meanwhile: read it until the run's last event (its result
            # stored as the agent's memory, after the task's end) has come by.
            wanted = (f"subject: evt.task.{task_id}".encode(), COMPLETED, f"subject: evt.memory.{agent_id}".encode())
            seen = await follow_until(follower, *wanted, timeout=30)
        finally:
            follower.terminate()
            rest, _ = await asyncio.wait_for(follower.communicate(), timeout=10)
        followed = seen + rest

        info = (await run_nats(nats_cli, env, "stream", "info", "EVENTS")).decode()
        for line in (
            "Subjects: evt.>",
            "Replicas: 1",
            "Storage: File",
            "Discard Policy: New",
            "Duplicate Window: 5m0s",
            "Allows Msg Delete: false",
            "Allows Purge: false",
            "Allows Atomic Batch Publish: true",
        ):
            assert line in info, f"{line!r} not in:\n{info}"
        stored = int(re.search(r"Messages: ([\d,]+)", info).group(1).replace(",", ""))  # type: ignore[union-attr]
        assert stored > 0

        headers = await run_nats(nats_cli, env, "sub", "--stream", "EVENTS", "evt.>", "--all", "--headers-only", "-T")
        text = headers.decode(errors="replace")
        assert text.count("Received JetStream message") == stored
        for expected in (
            f"subject: evt.agent.{agent_id}",
            f"subject: evt.task.{task_id}",
            "Symbi-Event-Type: agent.registered",
            "Symbi-Event-Type: task.submitted",
            "Symbi-Event-Type: task.completed",
            f"Symbi-Aggregate: agent/{agent_id}",
            f"Symbi-Aggregate: task/{task_id}",
            "Symbi-Producer: lifecycle",
            "Symbi-Producer: scheduler",
            "Symbi-Producer: sandbox-agent",
            "Symbi-Producer: context",
            "Symbi-Event-Id: ",
            "Symbi-Correlation-Id: ",
        ):
            assert expected in text, f"{expected!r} not in the headers"

        # With the data: the envelope's msgpack header is readable, the payloads are not.
        everything = await run_nats(nats_cli, env, "sub", "--stream", "EVENTS", "evt.>", "--all", "-T")
        for readable in (b"event_type", b"task.completed", b"data_key_id", b"prev_hash"):
            assert readable in everything
        assert marker.encode() not in everything

        first = await run_nats(nats_cli, env, "stream", "get", "EVENTS", "1")
        assert b"Symbi-Event-Type: " in first
        assert b"prev_hash" in first
        assert marker.encode() not in first

        record = await run_nats(nats_cli, env, "kv", "get", "DATAKEYS", f"agent.{agent_id}", "--raw")
        decoded = msgspec.msgpack.decode(record, type=DataKeyRecord)
        registry = KeyRegistry.load(runtime_home / "keys")
        readers = {registry.wrap_key_of(service)[0] for service in AGGREGATE_READERS["agent"]}
        assert set(decoded.generations[decoded.current]) == readers  # sealed to each entitled reader, no one else
        assert marker.encode() not in record

        # The live follower saw this run's events as they were stored.
        assert f"subject: evt.task.{task_id}".encode() in followed, followed[-2000:]
        assert COMPLETED in followed
        assert marker.encode() not in followed

        refused = await run_nats(nats_cli, env, "sub", "evt.>", "--count", "1", ok=False)
        assert b'Permissions Violation for Subscription to "evt.>"' in refused
