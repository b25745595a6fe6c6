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
import base64
import hashlib
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import nats
import nats.errors
import typer
from opentelemetry.trace import StatusCode
from rich.console import Console
from rich.table import Table
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_common.telemetry import command_trace, trace_http_request, trace_id_of
from symbi_tlog.merkle import verify_inclusion
from symbi_tlog.notes import Checkpoint
from symbi_tlog.offline import WITNESS_MISSING, TrustAnchor, audit_key, check_checkpoint
from symbi_tlog.rules import CachedRegistry, LogVerifier, event_leaf, verdict

from symbi_cli.agent_cmd import registration_body
from symbi_cli.credentials import auth_headers
from symbi_cli.errors import CliError
from symbi_cli.runtime import DEFAULT_BASE_PORT, SERVICE_PORT_OFFSETS
from symbi_cli.status_cmd import read_state
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
POLL_S = 0.25


class RunError(SymbiError):
    """A step of ``symbi run`` failed (registration refused, a service unreachable or refusing)."""

    code = "run_failed"


class ReceiptInvalid(SymbiError):
    """The audit receipt does not verify: a checkpoint, leaf or inclusion proof does not match.

    ``reason`` is the typed cause: a checkpoint finding of the offline verifier (``checkpoint_origin``,
    ``checkpoint_signature``, ``witness_cosignature_missing`` …) or ``event_invalid``, ``proof_invalid``,
    ``not_covered``.
    """

    code = "receipt_invalid"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ServiceUrls:
    lifecycle: str
    scheduler: str
    audit: str
    context: str


def service_urls(home: Path, base_port: int | None) -> ServiceUrls:
    """The services' URLs: from ``symbi up``'s state file, or ``127.0.0.1:<base + offset>``."""
    state = None if base_port is not None else read_state(home.resolve())
    recorded = state.get("services", {}) if state else {}

    def url(name: str) -> str:
        entry = recorded.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("url"), str):
            return str(entry["url"]).rstrip("/")
        return f"http://127.0.0.1:{(base_port or DEFAULT_BASE_PORT) + SERVICE_PORT_OFFSETS[name]}"

    return ServiceUrls(url("lifecycle"), url("scheduler"), url("audit"), url("context"))


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


async def _request(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return await http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise RunError(f"cannot reach {url} ({exc}); is `symbi up` running?") from exc


def _json_body(response: httpx.Response, what: str) -> dict[str, Any]:
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
    agent = _json_body(await _request(http, "POST", f"{urls.lifecycle}/v1/agents", json=body), "registration")
    if agent.get("state") != "Ready":
        problems = "; ".join(str(e.get("message", e)) for e in agent.get("errors", []) if isinstance(e, dict))
        raise RunError(f"agent {agent.get('id')} is {agent.get('state')}, not Ready: {problems or 'no reason given'}")
    return agent


async def agent_ready(http: httpx.AsyncClient, urls: ServiceUrls, agent_id: str, timeout: float) -> dict[str, Any]:
    """The agent once it is Ready again after its task (or as it is when ``timeout`` runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        agent = _json_body(await _request(http, "GET", f"{urls.lifecycle}/v1/agents/{agent_id}"), "agent lookup")
        if agent.get("state") == "Ready" or time.monotonic() > deadline:
            return agent
        await asyncio.sleep(POLL_S)


#: The longest result kept whole as a memory; a longer one is kept as its beginning, with a note and its digest.
MEMORY_MAX_CHARS = 16_000


def result_memory(result: str) -> tuple[str, dict[str, Any]] | None:
    """The memory text and metadata for a task's output; None for an output with nothing in it."""
    if not result.strip():
        return None
    if len(result) <= MEMORY_MAX_CHARS:
        return result, {}
    digest = hashlib.sha256(result.encode()).hexdigest()
    note = f"\n[… truncated: the first {{kept}} of {len(result)} characters; sha256 of the whole result {digest}]"
    kept = MEMORY_MAX_CHARS - len(note.format(kept=MEMORY_MAX_CHARS))
    text = result[:kept] + note.format(kept=kept)
    return text, {"truncated": True, "result_chars": len(result), "result_sha256": digest}


async def store_memory(
    http: httpx.AsyncClient, urls: ServiceUrls, agent_id: str, task_id: str, text: str
) -> dict[str, Any]:
    """Keep what the agent produced as its long-term memory, with the task as origin.

    An empty output is not stored (there is nothing to remember; ``skipped`` says so); a long one is stored
    as its beginning with a note and the SHA-256 of the whole output (``truncated``).
    """
    memory = result_memory(text)
    if memory is None:
        return {"skipped": "the task printed nothing; no memory stored"}
    kept, metadata = memory
    item: dict[str, Any] = {"kind": "long_term", "text": kept, "tags": ["task-result"], "origin": {"task_id": task_id}}
    if metadata:
        item["metadata"] = metadata
    body = {"agent_id": agent_id, "memories": [item]}
    stored = _json_body(await _request(http, "POST", f"{urls.context}/v1/memories", json=body), "storing the memory")
    if metadata:
        stored["truncated"] = {"kept_chars": len(kept), "result_chars": metadata["result_chars"]}
    return stored


async def stored_task_events(nats_url: str, task_id: str) -> list[RawMessage]:
    """The task's and its execution's events exactly as stored, in stream order."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        found: list[RawMessage] = []
        for subject in (f"evt.task.{task_id}", f"evt.execution.{task_id}"):
            async for batch in read_subject(nc, EVENTS_STREAM, subject):
                found.extend(batch)
    finally:
        await nc.drain()
    return sorted(found, key=lambda m: m.sequence)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_proof(proof: dict[str, Any], message: RawMessage, checkpoint: Checkpoint) -> dict[str, Any]:
    """One receipt line, after checking the served proof against our own leaf and the signed root."""
    leaf = event_leaf(message)
    if proof.get("sequence") != message.sequence or proof.get("tree_size") != checkpoint.size:
        raise ReceiptInvalid(
            f"the proof served for event {message.sequence} is for another event or tree", reason="proof_invalid"
        )
    if proof.get("leaf_hash") != _b64(leaf):
        raise ReceiptInvalid(
            f"event {message.sequence}: the audit log's leaf differs from the stored event's", reason="proof_invalid"
        )
    path = [base64.b64decode(h) for h in proof.get("proof", [])]
    index = int(proof["leaf_index"])
    if not verify_inclusion(leaf, index, checkpoint.size, path, checkpoint.root):
        raise ReceiptInvalid(
            f"event {message.sequence}: the inclusion proof does not lead to the signed root", reason="proof_invalid"
        )
    return {
        "sequence": message.sequence,
        "subject": message.subject,
        "event_type": message.headers.get("Symbi-Event-Type", ""),
        "leaf_index": index,
        "leaf_hash": _b64(leaf),
        "proof": proof.get("proof", []),
        "verified": True,
    }


def check_events(events: list[RawMessage], registry: KeyRegistry) -> None:
    """Each stored event, checked here and not taken from the audit service's word: its signature, that its
    key may write its subject, and each aggregate's hash chain from its first version on."""
    rules = LogVerifier(partial=True)  # the task's subjects only: stream sequences have gaps
    cached = CachedRegistry(registry)
    first: set[str] = set()
    for message in events:
        v = verdict(message, cached)
        if message.subject not in first:
            first.add(message.subject)
            if v.version != 1:
                raise ReceiptInvalid(
                    f"{message.subject} does not start at version 1: its first events are missing",
                    reason="event_invalid",
                )
        findings = rules.apply(v)
        if findings:
            f = findings[0]
            raise ReceiptInvalid(
                f"event {message.sequence} ({message.subject}) does not verify: {f.kind}: {f.reason}",
                reason="event_invalid",
            )


def trusted_checkpoint(note: str, anchor: TrustAnchor) -> Checkpoint:
    """The checkpoint of ``note`` if the pinned audit key signed it for the anchor's origin and, with witnesses
    in the anchor, at least ``min_witnesses`` of them cosigned it; else :class:`ReceiptInvalid` with the first
    finding's kind as its reason."""
    checkpoint, findings = check_checkpoint(note, anchor)
    if checkpoint is None or findings:
        reason = findings[0].kind if findings else "checkpoint_signature"
        raise ReceiptInvalid("checkpoint: " + "; ".join(f.reason for f in findings), reason=reason)
    return checkpoint


async def _receipt_from(
    http: httpx.AsyncClient, urls: ServiceUrls, events: list[RawMessage], note: str, anchor: TrustAnchor
) -> dict[str, Any] | None:
    """The receipt against the checkpoint ``note``; None while its tree does not hold every event yet."""
    checkpoint = trusted_checkpoint(note, anchor)
    proofs = []
    for message in reversed(events):  # the newest first: if it is not covered yet, none of them need asking
        params = {"sequence": message.sequence, "size": checkpoint.size}
        answer = await _request(http, "GET", f"{urls.audit}/v1/audit/proofs/inclusion", params=params)
        if answer.status_code == 404:
            return None  # not in this checkpoint's tree yet
        proofs.append(check_proof(_json_body(answer, "inclusion proof"), message, checkpoint))
    proofs.reverse()
    return {
        "verified": True,
        "checkpoint": {
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "root": _b64(checkpoint.root),
            "key": audit_key(anchor.registry)[0],
            "witnesses": sorted(w.name for w in anchor.witnesses),
            "min_witnesses": anchor.min_witnesses,
            "note": note,
        },
        "events": proofs,
    }


async def audit_receipt(
    http: httpx.AsyncClient, urls: ServiceUrls, events: list[RawMessage], anchor: TrustAnchor, timeout: float
) -> dict[str, Any]:
    """Wait for a signed checkpoint covering ``events``, then verify each one's inclusion in it.

    The audit service checkpoints on its own (every ``checkpoint_interval_s``); there is no way to ask for
    one, so the receipt waits for the first checkpoint whose tree holds every event. A checkpoint without
    the cosignatures the anchor demands may still be gathering them: it is asked again until ``timeout``,
    then refused (``witness_cosignature_missing``); any other checkpoint finding is refused at once.
    """
    if not events:
        raise ReceiptInvalid("the task has no stored events", reason="event_invalid")
    check_events(events, anchor.registry)
    deadline = time.monotonic() + timeout
    uncosigned: ReceiptInvalid | None = None
    while True:
        response = await _request(http, "GET", f"{urls.audit}/v1/audit/checkpoints/latest")
        if response.status_code == 200:
            try:
                receipt = await _receipt_from(http, urls, events, response.text, anchor)
            except ReceiptInvalid as err:
                if err.reason != WITNESS_MISSING:
                    raise
                uncosigned, receipt = err, None
            else:
                uncosigned = None
            if receipt is not None:
                return receipt
        elif response.status_code != 404:
            _json_body(response, "latest checkpoint")
        if time.monotonic() > deadline:
            if uncosigned is not None:
                raise uncosigned
            raise ReceiptInvalid(
                f"no audit checkpoint covered the task's {len(events)} events within {timeout:.0f} s",
                reason="not_covered",
            )
        await asyncio.sleep(POLL_S * 2)


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
    async with httpx.AsyncClient(timeout=30.0, event_hooks={"request": [trace_http_request]}, headers=headers) as http:
        agent = await register_agent(http, urls, file, agent_id)
        doc["agent"] = {"id": agent["id"], "name": agent.get("name"), "version": agent.get("version")}
        console.print(f"agent [bold]{agent['id']}[/] ({agent.get('name')} {agent.get('version')}): Ready")

        body: dict[str, Any] = {"agent_id": agent_id, "priority": "normal"}
        try:
            body["input"] = data.decode()
        except UnicodeDecodeError:
            body["input_base64"] = _b64(data)
        api = SchedulerApi(urls.scheduler, headers)
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
