"""``symbi run FILE --input …``: one agent run from definition to verified audit receipt.

The command registers the agent from its definition (the lifecycle service compiles and activates its
policies), submits a task and follows it live (``symbi task run``'s follower: state changes, host and
sandbox tier, the allocation decision), stores the result as a memory of the agent with the task as
its origin, and ends with an audit receipt: the task's stored events, the signed checkpoint covering
them and their inclusion proofs.

The receipt trusts neither the audit service nor this machine's view of it: the events are read as
stored from the ``EVENTS`` stream, their signatures, signers and hash chains checked here and their
Merkle leaves computed here (the audit API's ``verified`` flag is never consulted); the checkpoint's
signature is checked against the audit key of the root-signed key registry and its origin against the
expected one (``--origin``, default the ``[audit] origin`` the audit service signs under); with witnesses
(``--witness-key`` … ``--min-witnesses``, default the ``[[audit.witnesses]]`` and ``min_witnesses`` of the
configuration) at least k of them must have cosigned it; each inclusion proof is verified against the
signed root (RFC 9162). Any mismatch makes the command exit 3, with a typed ``reason`` in the receipt
(``checkpoint_origin``, ``witness_cosignature_missing`` …).

Exit status: 0 success, 1 registration or service failure, the task's exit code if it failed, 3 if the
receipt does not verify.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import nats.errors
import typer
from opentelemetry.trace import StatusCode
from rich.console import Console
from rich.table import Table
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.telemetry import command_trace, trace_http_request, trace_id_of
from symbi_tlog.offline import TrustAnchor

from symbi_cli.credentials import auth_headers
from symbi_cli.errors import CliError
from symbi_cli.run_memory import MEMORY_MAX_CHARS, result_memory, store_memory
from symbi_cli.run_receipt import (
    ReceiptInvalid,
    audit_receipt,
    b64,
    check_events,
    check_proof,
    stored_task_events,
    trusted_checkpoint,
)
from symbi_cli.run_services import (
    POLL_S,
    RunError,
    ServiceUrls,
    agent_ready,
    register_agent,
    service_urls,
)
from symbi_cli.service_http import verify
from symbi_cli.task_cmd import DEFAULT_HOME, SchedulerApi, TaskCommandError, events_nats_url, follow_run, task_input
from symbi_cli.trust import (
    ConfigOption,
    MaxAgeOption,
    MinWitnessesOption,
    OriginOption,
    WitnessKeyOption,
    audit_settings,
    trust_anchor,
)

EXIT_FAILED = 1
EXIT_RECEIPT = 3

#: Re-exported: these lived here before ``symbi run`` was split into its steps.
__all__ = [
    "EXIT_FAILED",
    "EXIT_RECEIPT",
    "MEMORY_MAX_CHARS",
    "POLL_S",
    "ReceiptInvalid",
    "RunError",
    "ServiceUrls",
    "agent_ready",
    "audit_receipt",
    "check_events",
    "check_proof",
    "default_agent_id",
    "print_run",
    "register_agent",
    "result_memory",
    "run",
    "run_agent",
    "service_urls",
    "store_memory",
    "stored_task_events",
    "trusted_checkpoint",
]


def default_agent_id(file: Path) -> str:
    """The file's stem plus a short random suffix, so re-running a file registers a fresh agent."""
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in file.stem)[:100] or "agent"
    return f"{stem}-{secrets.token_hex(3)}"


def _read_input(value: str | None) -> bytes:
    """``-`` is stdin, an existing file is read, anything else (text or JSON) is the input itself."""
    if value is None:
        return b""
    if value == "-" or Path(value).is_file():
        return task_input(None, Path(value))
    return value.encode()


def _task_summary(view: dict[str, Any]) -> dict[str, Any]:
    keys = [
        "task_id",
        "agent_id",
        "status",
        "outcome",
        "exit_code",
        "host_id",
        "tier",
        "risk_score",
        "attempt",
        "decision",
        "detail",
    ]
    return {k: view.get(k) for k in keys}


def _tier_line(view: dict[str, Any]) -> str:
    """Where the task ran and why there: the risk score that chose the tier and the allocation decision."""
    why = []
    if view.get("risk_score") is not None:
        why.append(f"risk score {view['risk_score']:.2f}")
    decision = view.get("decision")
    if isinstance(decision, dict):
        by = ", ".join(decision.get("policies") or []) or "no policy"
        reason = f": {decision['reason']}" if decision.get("reason") else ""
        why.append(f"{decision.get('action')} {decision.get('effect')} by {by}{reason}")
    return f"sandbox {view.get('tier')} on {view.get('host_id')}" + (f" ({'; '.join(why)})" if why else "")


async def run_agent(
    file: Path,
    data: bytes,
    *,
    agent_id: str,
    urls: ServiceUrls,
    nats_url: str,
    keys_dir: Path,
    console: Console,
    receipt_timeout: float,
    home: Path | None = None,
    anchor: TrustAnchor | None = None,
) -> tuple[int, dict[str, Any]]:
    """Every step of ``symbi run``; returns the exit status and the document describing the run.

    Every call carries the operator credential of ``home`` (``$SYMBI_OPERATOR_TOKEN`` first). The receipt is
    checked against ``anchor`` (default: the registry of ``keys_dir``, origin and witnesses as configured)."""
    if anchor is None:
        anchor = trust_anchor(KeyRegistry.load(keys_dir), audit_settings(None))
    doc: dict[str, Any] = {}
    headers = auth_headers(home)
    # A deployment's services are reached over HTTPS and must show a certificate of its CA.
    trust = verify(home)
    async with httpx.AsyncClient(
        timeout=30.0, event_hooks={"request": [trace_http_request]}, headers=headers, verify=trust
    ) as http:
        agent = await register_agent(http, urls, file, agent_id)
        doc["agent"] = {"id": agent["id"], "name": agent.get("name"), "version": agent.get("version")}
        console.print(f"agent [bold]{agent['id']}[/] ({agent.get('name')} {agent.get('version')}): Ready")

        body: dict[str, Any] = {"agent_id": agent_id, "priority": "normal"}
        try:
            body["input"] = data.decode()
        except UnicodeDecodeError:
            body["input_base64"] = b64(data)
        api = SchedulerApi(urls.scheduler, headers, verify=trust)
        try:
            try:
                task_id = (await api.submit(body))["task_id"]
                console.print(f"task {task_id} submitted")
                final = await follow_run(api, nats_url, task_id, console)
                stdout, _ = await api.output(task_id, "stdout", 0)
            except TaskCommandError as exc:
                raise RunError(str(exc)) from exc
        finally:
            await api.close()
        result = stdout.decode(errors="replace")
        doc["task"] = _task_summary(final)
        doc["result"] = result
        console.print(_tier_line(final))
        succeeded = final.get("status") == "completed" and final.get("outcome") == "succeeded"
        console.print(f"task {final.get('outcome') or final.get('status')}")

        after = await agent_ready(http, urls, agent_id, timeout=10.0)
        doc["agent"]["state"] = after.get("state")
        memory = await store_memory(http, urls, agent_id, task_id, result)
        if "skipped" in memory:
            doc["memory"] = {"skipped": memory["skipped"]}
            console.print(memory["skipped"])
        else:
            doc["memory"] = {
                "ids": memory.get("ids"),
                "sequence": memory.get("sequence"),
                "origin": {"task_id": task_id},
            }
            if "truncated" in memory:
                doc["memory"]["truncated"] = memory["truncated"]
            note = " (truncated: the output is longer than a memory holds)" if "truncated" in memory else ""
            console.print(f"result stored as memory {', '.join(memory.get('ids') or [])}{note}")

        events = await stored_task_events(nats_url, task_id)
        console.print(f"waiting for an audit checkpoint covering the task's {len(events)} events …")
        try:
            doc["receipt"] = await audit_receipt(http, urls, events, anchor, receipt_timeout)
        except ReceiptInvalid as exc:
            doc["receipt"] = {"verified": False, "reason": exc.reason, "error": str(exc)}
            return EXIT_RECEIPT, doc
    if succeeded:
        return 0, doc
    code = final.get("exit_code")
    return (code if isinstance(code, int) and 0 < code < 256 else EXIT_FAILED), doc


def print_run(console: Console, doc: dict[str, Any]) -> None:
    """The result on stdout, the receipt as a table."""
    sys.stdout.write(doc.get("result", ""))
    sys.stdout.flush()
    receipt = doc.get("receipt") or {}
    if not receipt.get("verified"):
        console.print(f"[red]✗ audit receipt not verified ({receipt.get('reason')}):[/] {receipt.get('error')}")
        return
    cp = receipt["checkpoint"]
    table = Table(title=f"audit receipt — checkpoint {cp['origin']} size {cp['size']}, signed by {cp['key']}")
    for column in ("sequence", "event", "leaf", "proof", ""):
        table.add_column(column)
    for e in receipt["events"]:
        table.add_row(str(e["sequence"]), e["event_type"], str(e["leaf_index"]), f"{len(e['proof'])} hashes", "✓")
    console.print(table)
    console.print(f"[green]✓ {len(receipt['events'])} events included in the signed root {cp['root']}[/]")


def run(
    file: Annotated[Path, typer.Argument(help="The agent's definition (.symbi) or JSON configuration.")],
    input_: Annotated[
        str | None, typer.Option("--input", help="The task's input: a file, '-' (stdin), or the text/JSON itself.")
    ] = None,
    agent_id: Annotated[
        str | None, typer.Option("--id", help="The agent id (default: the file name and a short suffix).")
    ] = None,
    home: Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The runtime home of `symbi up`.")] = (
        DEFAULT_HOME
    ),
    base_port: Annotated[
        int | None, typer.Option("--base-port", help="Service ports are base+1 … base+6 (default: the state file).")
    ] = None,
    nats_url: Annotated[
        str | None, typer.Option("--nats", envvar="SYMBI_NATS_URL", help="NATS (default: `symbi up`'s operator URL).")
    ] = None,
    keys_dir: Annotated[
        Path | None, typer.Option("--keys-dir", envvar="SYMBI_KEYS_DIR", help="Keyring (default: <home>/keys).")
    ] = None,
    receipt_timeout: Annotated[
        float, typer.Option("--receipt-timeout", help="Seconds to wait for a covering audit checkpoint.")
    ] = 60.0,
    origin: OriginOption = None,
    witness_key: WitnessKeyOption = None,
    min_witnesses: MinWitnessesOption = None,
    max_age: MaxAgeOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead.")] = False,
) -> None:
    """Register an agent, run one task on it live, remember its result and print a verified audit receipt."""
    console = Console(stderr=True)
    keys = keys_dir or home / "keys"
    try:
        registry = KeyRegistry.load(keys)
    except SymbiError as exc:
        console.print(f"[red]error:[/] the keyring {keys}: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    # Before anything runs: a receipt that could never be checked as configured is refused up front.
    anchor = trust_anchor(
        registry,
        audit_settings(config),
        origin=origin,
        witness_keys=witness_key,
        min_witnesses=min_witnesses,
        max_age=max_age,
    )
    data = _read_input(input_)
    chosen_id = agent_id or default_agent_id(file)
    # One trace for the whole run: every request carries it, so each service's work joins it.
    with command_trace("cli", "symbi run", {"symbi.file": str(file), "symbi.agent_id": chosen_id}) as span:
        trace_id = trace_id_of(span)
        console.print(f"trace {trace_id}")
        try:
            code, doc = asyncio.run(
                run_agent(
                    file,
                    data,
                    agent_id=chosen_id,
                    urls=service_urls(home, base_port),
                    nats_url=events_nats_url(nats_url, home),
                    keys_dir=keys,
                    home=home,
                    anchor=anchor,
                    console=console,
                    receipt_timeout=receipt_timeout,
                )
            )
        except (SymbiError, CliError, OSError, nats.errors.Error) as exc:
            console.print(f"[red]error:[/] {exc}")
            span.set_status(StatusCode.ERROR, str(exc))
            code, doc = EXIT_FAILED, {}
        span.set_attribute("symbi.exit_code", code)
        if doc.get("task"):
            span.set_attribute("symbi.task_id", str(doc["task"].get("task_id")))
    if not doc:
        raise typer.Exit(EXIT_FAILED)
    doc["trace_id"] = trace_id
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_run(Console(), doc)
    raise typer.Exit(code)
