"""Decisions a process made but had not got into the decision log when it died are sent by the next one.

The dying process is a real one, killed with SIGKILL while NATS does not take its batches (no DECISIONS
stream): only its spool file holds its decisions. The next process of the same service sends them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import msgspec
import nats
from symbi_common.decision_queue import decisions_subject
from symbi_common.decisions import DecisionRecord, DecisionRequest, EntityRef
from symbi_common.policy import Enforcer
from symbi_common.policy.decision_log import LogDecisions
from symbi_common.policy.decision_spool import DecisionSpool
from symbi_common.policy.events import LoggedDecision
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_common.stream_provisioning import provision_streams
from symbi_policy.main import build_app

from .conftest import service_env, stored_decisions

DYING = """
import asyncio, json, sys
import nats
from symbi_common.decision_queue import DECISIONS_STREAM
from symbi_common.decisions import DecisionRequest, EntityRef
from symbi_common.errors import PolicyDenied
from symbi_common.policy import Enforcer
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings

async def main() -> None:
    runtime = ServiceRuntime("scheduler", load_settings(env=json.loads(sys.argv[1])), use_database=False)
    await runtime.start()
    admin = await nats.connect(runtime.settings.nats.url)
    await admin.jetstream().delete_stream(DECISIONS_STREAM)  # NATS takes no batch from now on
    enforcer = await Enforcer.for_runtime(runtime)
    enforcer.suspend_agents = False
    for i in range(5):
        request = DecisionRequest(
            principal=EntityRef(type="User", id="u"), action="data.read", resource=EntityRef(type="Data", id=f"k{i}")
        )
        try:
            await enforcer.enforce(request)
        except PolicyDenied:
            pass
    print("decided", enforcer.log.pending, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def spool_files(spool: Path, service: str) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.name.startswith(f"{service}-"))


def env_for(nats_url: str, keys_dir: Path, spool: Path) -> dict[str, str]:
    return service_env(nats_url, keys_dir, SYMBI_POLICY__LOG_SPOOL_DIR=str(spool), SYMBI_POLICY__LOG_INTERVAL_S="0.05")


async def test_decisions_of_a_killed_process_are_sent_by_the_next_one(
    nats_url: str, keys_dir: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    env = env_for(nats_url, keys_dir, spool)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DYING, json.dumps(env), stdout=asyncio.subprocess.PIPE, env=dict(os.environ)
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.split() == [b"decided", b"5"], line  # all five queued: none reached the stream
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    (left,) = spool_files(spool, "scheduler")  # what the killed process held
    admin = await nats.connect(nats_url)
    try:
        await provision_streams(admin.jetstream())
    finally:
        await admin.drain()
    app = build_app(load_settings(env=env))
    async with app.router.lifespan_context(app):
        runtime = ServiceRuntime("scheduler", load_settings(env=env), use_database=False)
        await runtime.start()
        try:
            enforcer = await Enforcer.for_runtime(runtime)
            assert enforcer.log is not None
            for _ in range(200):  # the replay runs in the background from the start
                if left not in spool_files(spool, "scheduler"):
                    break
                await asyncio.sleep(0.05)
            _, denied = await stored_decisions(app.state.runtime)
        finally:
            await runtime.stop()
    ids = sorted(d.entry.request.resource.id for d in denied if d.entry.request.resource.id.startswith("k"))
    assert ids == [f"k{i}" for i in range(5)]  # each once
    assert spool_files(spool, "scheduler") == []  # its own went when it stopped, all stored


async def test_a_batch_stored_just_before_the_process_died_is_stored_once(
    nats_url: str, keys_dir: Path, tmp_path: Path
) -> None:
    """The process published the batch and died before it could write down that it was stored: the next
    process sends it again under the same id, and the decision log keeps one copy."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    env = env_for(nats_url, keys_dir, spool_dir)
    source = "audit-0123456789ab"
    entries = [
        msgspec.json.encode(
            LoggedDecision(
                request=DecisionRequest(
                    principal=EntityRef(type="Agent", id="twice"),
                    action="task.allocate",
                    resource=EntityRef(type="Data", id=f"once-{i}"),
                ),
                record=DecisionRecord(action="task.allocate", effect="deny", policy_version=0, decision_id=f"d{i}"),
                at_ns=1,
                service="audit",
            )
        )
        for i in range(2)
    ]
    spool = DecisionSpool(spool_dir, source)
    for entry in entries:
        spool.append(entry)
    spool.begin("batch-sent-once", 2)
    app = build_app(load_settings(env=env))
    async with app.router.lifespan_context(app):
        js = app.state.runtime.js
        body = LogDecisions(source=source, batch_id="batch-sent-once", entries=[msgspec.Raw(e) for e in entries])
        await js.publish(
            decisions_subject("audit"), msgspec.json.encode(body), headers={"Nats-Msg-Id": "batch-sent-once"}
        )
        spool.close(all_stored=False)  # died before the "stored" frame
        runtime = ServiceRuntime("audit", load_settings(env=env), use_database=False)
        await runtime.start()
        try:
            await Enforcer.for_runtime(runtime)
            for _ in range(200):
                if f"{source}.spool" not in spool_files(spool_dir, "audit"):
                    break
                await asyncio.sleep(0.05)
            assert f"{source}.spool" not in spool_files(spool_dir, "audit")
            _, denied = await stored_decisions(app.state.runtime)
        finally:
            await runtime.stop()
    ids = sorted(d.entry.request.resource.id for d in denied if d.entry.request.principal.id == "twice")
    assert ids == ["once-0", "once-1"]  # sent twice through the real stream, stored once
