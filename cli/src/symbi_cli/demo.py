"""``symbi demo``: the runtime as ``symbi up`` runs it, its main job, then one agent's whole lifecycle.

1. The main job, exactly as ``symbi run`` does it: the example agent ``hello.symbi`` is registered from
   its definition, one task runs in the sandbox, the result is kept as the agent's memory and the run
   ends with an audit receipt (the task's events, the signed checkpoint covering them and their
   inclusion proofs), verified here. It needs a Docker engine (``deploy/host/setup-docker.sh``).
2. The lifecycle walk-through: every step goes through the lifecycle service's HTTP API and checks the
   state it answers with. The event history is then read twice: from the service (its verified,
   decrypted read model) and straight from JetStream, where each stored envelope is checked here again
   against the root-signed key registry (signature, signer authorised for the subject, hash chain).
   The two must agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry

from symbi_cli.credentials import auth_headers
from symbi_cli.errors import CliError, DemoError
from symbi_cli.events import EventLine, tail
from symbi_cli.run_cmd import default_agent_id, print_run, run_agent
from symbi_cli.run_services import ServiceUrls
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_cli.ui import ConsoleReporter, Interrupted, stop_signals, unless_stopped, wait_ready_with_progress

EXIT_INTERRUPTED = 130
MAIN_JOB_INPUT = b"world\n"


@dataclass(frozen=True, slots=True)
class Step:
    """One lifecycle command of the walk-through and the state it must lead to."""

    action: str
    body: dict[str, Any]
    expect: str
    why: str


HELLO_WALK = (
    Step("assign-task", {"task_id": "task-1", "description": "greet the new user"}, "Running", "task assigned"),
    Step(
        "suspend",
        {"reason": "policy violation: egress to paste.example.net is not allowed", "policy_id": "net-egress"},
        "Suspended",
        "policy violation",
    ),
    Step("resume", {"reason": "policy cleared by the operator"}, "Running", "policy cleared"),
    Step("complete-task", {"task_id": "task-1", "outcome": "succeeded"}, "Ready", "task complete"),
    Step("terminate", {"reason": "shutdown"}, "Terminated", "shutdown"),
)


def find_agents_dir(explicit: Path | None = None) -> Path:
    """``examples/agents``: given, under the working directory, or in the source tree of this package."""
    if explicit is not None:
        return explicit
    candidates = [Path.cwd(), *Path(__file__).resolve().parents]
    for base in candidates:
        path = base / "examples" / "agents"
        if (path / "hello.json").is_file():
            return path
    raise DemoError("cannot find examples/agents/hello.json; run from the repository or pass --agents-dir")


def load_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DemoError(f"cannot read agent config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DemoError(f"{path} must hold a JSON object")
    return data


class LifecycleApi:
    """The few calls of the lifecycle HTTP API the demo makes; any unexpected answer is a :class:`DemoError`."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def _call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = await self.http.request(method, path, json=body)
        if resp.status_code != expect:
            raise DemoError(f"{method} {path} answered {resp.status_code}, expected {expect}: {resp.text}")
        return resp.json()

    async def register(self, config: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/v1/agents", {"config": config}, 201)
        return result

    async def command(self, agent_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/v1/agents/{agent_id}/{action}", body)
        return result

    async def refused(self, agent_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """A command the state machine must refuse (409)."""
        result: dict[str, Any] = await self._call("POST", f"/v1/agents/{agent_id}/{action}", body, 409)
        return result

    async def events(self, agent_id: str, min_sequence: int) -> list[dict[str, Any]]:
        page = await self._call("GET", f"/v1/agents/{agent_id}/events?min_sequence={min_sequence}&limit=500")
        items: list[dict[str, Any]] = page["items"]
        return items


def _expect_state(agent: dict[str, Any], expected: str, what: str) -> None:
    if agent.get("state") != expected:
        raise DemoError(f"{what}: expected state {expected}, the service answered {agent.get('state')}: {agent}")


async def verify_stream(nats_url: str, keys_dir: Path, agent_id: str) -> list[EventLine]:
    """Read the agent's stored envelopes from JetStream and verify each one against the key registry."""
    registry = KeyRegistry.load(keys_dir)
    lines = [line async for line in tail(nats_url, registry, f"evt.agent.{agent_id}", last=None, follow=False)]
    bad = [line for line in lines if not line.verified]
    if bad:
        raise DemoError(
            f"the stored history of agent {agent_id} does not verify at sequence {bad[0].sequence}: {bad[0].problem}"
        )
    if lines and lines[0].aggregate_version != 1:
        raise DemoError(f"the stored history of agent {agent_id} does not start at version 1")
    return lines


def history_table(title: str, api_events: list[dict[str, Any]], stored: list[EventLine]) -> Table:
    """The service's history joined with the verified envelopes; they must be the same events."""
    by_seq = {e.sequence: e for e in stored}
    if sorted(by_seq) != sorted(int(e["sequence"]) for e in api_events):
        raise DemoError(
            f"{title}: the service's history (sequences {[e['sequence'] for e in api_events]}) "
            f"differs from the stream ({sorted(by_seq)})"
        )
    table = Table(
        title=title,
        caption="✓ = signature valid, signer authorised for the subject by the root-signed registry, hash chain intact",
    )
    table.add_column("seq", justify="right")
    table.add_column("ver", justify="right")
    table.add_column("event type", style="bold", no_wrap=True)
    table.add_column("producer", no_wrap=True)
    table.add_column("signing key id", style="cyan", no_wrap=True)
    table.add_column("✓", style="green")
    for event in api_events:
        env = by_seq[int(event["sequence"])]
        if env.event_type != event["type"] or env.aggregate_version != event["aggregate_version"]:
            raise DemoError(f"{title}: event at sequence {env.sequence} differs between the service and the stream")
        table.add_row(
            str(env.sequence),
            str(env.aggregate_version),
            env.event_type,
            env.producer,
            env.signing_key_id,
            "✓",
        )
    return table


async def walk_through(runtime: LocalRuntime, console: Console, agents_dir: Path) -> None:
    """Register the example agents, drive them through their states, print their verified histories."""
    hello = load_config(agents_dir / "hello.json")
    invalid = load_config(agents_dir / "invalid.json")
    headers = auth_headers(runtime.home)
    async with httpx.AsyncClient(base_url=runtime.url_of("lifecycle"), timeout=15.0, headers=headers) as http:
        api = LifecycleApi(http)

        console.rule(f"agent {hello.get('name')} ({agents_dir / 'hello.json'})")
        agent = await api.register(hello)
        _expect_state(agent, "Ready", "register")
        agent_id = agent["id"]
        console.print(f"registered [bold]{agent_id}[/]: Initializing → [bold green]Ready[/] (config valid)")
        state = "Ready"
        for step in HELLO_WALK:
            agent = await api.command(agent_id, step.action, step.body)
            _expect_state(agent, step.expect, step.action)
            console.print(f"{step.action:<14} {state} → [bold green]{step.expect}[/] ({step.why})")
            state = step.expect
        refusal = await api.refused(agent_id, "assign-task", {"task_id": "task-2"})
        console.print(f"assign-task    refused in Terminated: [yellow]{refusal['error']['message']}[/]")
        hello_seq = int(agent["sequence"])

        console.rule(f"agent {invalid.get('name')} ({agents_dir / 'invalid.json'})")
        bad = await api.register(invalid)
        _expect_state(bad, "Failed", "register invalid config")
        console.print(f"registered [bold]{bad['id']}[/]: Initializing → [bold red]Failed[/] (config invalid)")
        if not bad.get("errors"):
            raise DemoError(f"the invalid agent failed without field errors: {bad}")
        errors = Table(title="config errors")
        errors.add_column("field", style="bold")
        errors.add_column("problem")
        for issue in bad["errors"]:
            errors.add_row(issue["field"], issue["message"])
        console.print(errors)
        bad = await api.command(bad["id"], "terminate", {"reason": "invalid config"})
        _expect_state(bad, "Terminated", "terminate the failed agent")
        console.print("terminate      Failed → [bold green]Terminated[/]")

        console.rule("event history")
        keys_dir = runtime.keys_dir
        for title, aid, seq in (
            (f"events of {agent_id} ({hello.get('name')})", agent_id, hello_seq),
            (f"events of {bad['id']} ({invalid.get('name')})", bad["id"], int(bad["sequence"])),
        ):
            api_events = await api.events(aid, seq)
            stored = await verify_stream(runtime.nats_url, keys_dir, aid)
            console.print(history_table(title, api_events, stored))
    console.print("[bold green]demo complete[/]: every event signed by the lifecycle key and verified")


async def main_job(runtime: LocalRuntime, console: Console, agents_dir: Path) -> int:
    """``symbi run examples/agents/hello.symbi --input world`` against this runtime; its exit status."""
    if "sandbox-agent" not in runtime.running_services:
        why = runtime.unavailable.get("sandbox-agent", "the sandbox-agent is not running")
        raise DemoError(f"the main job runs its task in a sandbox: {why}")
    file = agents_dir / "hello.symbi"
    console.rule(f"main job: symbi run {file} --input world")
    urls = ServiceUrls(*(runtime.url_of(name) for name in ("lifecycle", "scheduler", "audit", "context")))
    code, doc = await run_agent(
        file,
        MAIN_JOB_INPUT,
        agent_id=default_agent_id(file),
        urls=urls,
        nats_url=runtime.nats_url,
        keys_dir=runtime.keys_dir,
        console=console,
        receipt_timeout=60.0,
        home=runtime.home,
    )
    print_run(console, doc)
    if code != 0:
        raise DemoError(f"the main job ended with exit status {code}")
    return code


async def run_demo(
    options: RuntimeOptions,
    console: Console,
    *,
    agents_dir: Path | None = None,
    keep_running: bool = False,
    show_output: bool = True,
    ready_timeout: float = 60.0,
) -> int:
    """Exit code 0 if every step did what it should, 1 if one did not, 130 if interrupted."""
    directory = find_agents_dir(agents_dir)
    runtime = LocalRuntime(options, ConsoleReporter(console, show_output=show_output))
    with stop_signals() as stop:
        try:
            await unless_stopped(runtime.start(), stop)
            if "lifecycle" not in runtime.running_services:
                raise DemoError("the demo needs the lifecycle service (--services must include it)")
            await wait_ready_with_progress(runtime, console, stop, ready_timeout)
            await unless_stopped(main_job(runtime, console, directory), stop)
            await unless_stopped(walk_through(runtime, console, directory), stop)
            if keep_running:
                console.print(
                    f"runtime left running: lifecycle at {runtime.url_of('lifecycle')}, "
                    f"NATS at {runtime.nats_public_url}; Ctrl-C to stop"
                )
                await stop.wait()
            return 0
        except Interrupted:
            console.print("interrupted; stopping …")
            return EXIT_INTERRUPTED
        except (CliError, SymbiError, httpx.HTTPError, OSError) as exc:
            console.print(f"[bold red]demo failed:[/] {exc}")
            return 1
        finally:
            await runtime.stop()
