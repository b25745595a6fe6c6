"""``symbi run`` end to end: a real ``symbi up`` runtime (six services, nats-server, PostgreSQL, Docker)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from pathlib import Path

import httpx
import pytest
from symbi_cli.credentials import auth_headers
from symbi_cli.events import operator_url
from symbi_cli.run_receipt import ReceiptInvalid, check_proof, stored_task_events
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.crypto import Signer
from symbi_common.streams import RawMessage
from symbi_tlog.cosign import WitnessKey
from symbi_tlog.merkle import verify_inclusion
from symbi_tlog.notes import parse_checkpoint

REPO = Path(__file__).resolve().parents[2]


async def test_run_registers_runs_remembers_and_proves(
    runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str
) -> None:
    # The log's origin is configured (not the default): the audit service signs under it, and `symbi run`, given
    # the same configuration, expects it.
    env = dict(runtime_options.env or {}, SYMBI_AUDIT__ORIGIN="acme-audit")
    options = dataclasses.replace(runtime_options, env=env)
    rt = LocalRuntime(options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=60)
        proc = await asyncio.create_subprocess_exec(
            symbi_exe,
            "run",
            str(REPO / "examples" / "agents" / "hello.symbi"),
            "--input",
            "world",
            "--home",
            str(runtime_home),
            "--json",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode == 0, err.decode()
        doc = json.loads(out)
        # The run's trace id, to find it in Jaeger: in the document and on stderr.
        assert len(doc["trace_id"]) == 32
        assert int(doc["trace_id"], 16) != 0
        assert f"trace {doc['trace_id']}" in err.decode()

        assert doc["result"].strip() == "hello world"
        assert doc["agent"]["state"] == "Ready"
        assert doc["agent"]["id"].startswith("hello-")
        assert doc["task"]["status"] == "completed"
        assert doc["task"]["outcome"] == "succeeded"
        assert doc["memory"]["ids"]
        assert doc["memory"]["origin"] == {"task_id": doc["task"]["task_id"]}

        receipt = doc["receipt"]
        assert receipt["verified"] is True
        events = receipt["events"]
        assert len(events) >= 1
        assert {e["subject"] for e in events} >= {f"evt.task.{doc['task']['task_id']}"}
        # Re-check the printed receipt on its own: every proof leads to the signed root.
        checkpoint, _ = parse_checkpoint(receipt["checkpoint"]["note"])
        for e in events:
            path = [base64.b64decode(h) for h in e["proof"]]
            leaf = base64.b64decode(e["leaf_hash"])
            assert verify_inclusion(leaf, e["leaf_index"], checkpoint.size, path, checkpoint.root)

        # The memory is there: the agent can read its own result back.
        async with httpx.AsyncClient(timeout=10, headers=auth_headers(rt.home)) as http:
            r = await http.post(
                f"{rt.url_of('context')}/v1/memories/query",
                json={
                    "agent_id": doc["agent"]["id"],
                    "query": "hello world",
                    "min_sequence": doc["memory"]["sequence"],
                },
            )
            assert r.status_code == 200, r.text
            assert any("hello world" in str(hit) for hit in r.json()["results"])

        # The receipt check refuses a proof that does not fit the stored event or the signed root.
        stored = await stored_task_events(operator_url(runtime_home), doc["task"]["task_id"])
        assert [m.sequence for m in stored] == [e["sequence"] for e in events]
        e, message = events[0], stored[0]
        served = {k: e[k] for k in ("sequence", "leaf_index", "leaf_hash", "proof")} | {"tree_size": checkpoint.size}
        assert check_proof(served, message, checkpoint)["verified"] is True
        altered = RawMessage(message.subject, message.sequence, message.data + b" ", message.headers)
        with pytest.raises(ReceiptInvalid, match="leaf differs"):
            check_proof(served, altered, checkpoint)
        forged = served | {"proof": [base64.b64encode(bytes(32)).decode(), *e["proof"][1:]]}
        with pytest.raises(ReceiptInvalid, match="does not lead to the signed root"):
            check_proof(forged, message, checkpoint)

        assert checkpoint.origin == "acme-audit"

        # Another expected origin, or a witness that never cosigned: exit 3, with the typed reason.
        witness = WitnessKey("witness.example/w1", Signer.generate().public_key)
        for flags, reason in (
            (["--origin", "symbi-audit"], "checkpoint_origin"),
            (["--witness-key", witness.vkey(), "--receipt-timeout", "0.5"], "witness_cosignature_missing"),
        ):
            proc = await asyncio.create_subprocess_exec(
                symbi_exe,
                "run",
                str(REPO / "examples" / "agents" / "hello.symbi"),
                "--input",
                "world",
                "--home",
                str(runtime_home),
                "--json",
                *flags,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
            assert proc.returncode == 3, err.decode()
            refused = json.loads(out)["receipt"]
            assert refused["verified"] is False
            assert refused["reason"] == reason, refused

        # Without --json: the result on stdout, then the receipt.
        proc = await asyncio.create_subprocess_exec(
            symbi_exe,
            "run",
            str(REPO / "examples" / "agents" / "hello.symbi"),
            "--input",
            "-",
            "--id",
            "greeter",
            "--home",
            str(runtime_home),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(b"symbi\n"), timeout=90)
        assert proc.returncode == 0, err.decode()
        text = out.decode()
        assert text.startswith("hello symbi\n")
        assert "events included in the signed root" in text
        assert "agent greeter" in err.decode()
    finally:
        await rt.stop()
