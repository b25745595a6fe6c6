"""``symbi task``: Submit tasks and follow their output.

``symbi task run AGENT [INPUT]`` submits a task to the scheduler (``POST /v1/tasks``), shows its progress
live (queued → assigned to a host → running → completed) and prints the result — the workload's stdout —
on stdout; progress and errors go to stderr, so ``symbi task run summariser < doc.txt > summary.txt``
works. The exit status is 0 when the task succeeded, the workload's exit code when it failed with one,
and 1 otherwise.

``symbi task logs TASK_ID`` prints a task's output (stderr by default: the log) and with ``--follow``
keeps printing as the workload writes, until the task ends.

Progress is followed live from the task's events: an ordered JetStream consumer on ``evt.task.<id>`` and
``evt.execution.<id>`` reads only the clear headers (event type), so no data key is needed; the content
(status, output) comes from the scheduler's API, which verifies and decrypts it. Without NATS the
commands poll the API instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import sys
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Annotated, Any

import httpx
import nats
import typer
from nats.js.api import DeliverPolicy
from rich.console import Console
from symbi_common.nats_client import server_options
from symbi_common.telemetry import command_trace, trace_http_request
from symbi_contracts.sandbox_agent.events import OUTPUT_EVENT_TYPES

from symbi_cli.credentials import auth_headers
from symbi_cli.errors import CliError
from symbi_cli.events import operator_url
from symbi_cli.service_http import default_service_url, verify

task_app = typer.Typer(help="Submit tasks and follow their output.", no_args_is_help=True)

DEFAULT_HOME = Path(".symbi")
H_EVENT_TYPE = "Symbi-Event-Type"
POLL_S = 0.5

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="SYMBI_SCHEDULER_URL",
        help="The scheduler's HTTP API (default: 127.0.0.1:8083, HTTPS for a deployment).",
        show_default=False,
    ),
]
NatsOption = Annotated[
    str | None,
    typer.Option("--nats", envvar="SYMBI_NATS_URL", help="NATS to follow events on (default: `symbi up`'s)."),
]
HomeOption = Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The runtime home of `symbi up`.")]


class TaskCommandError(Exception):
    """A request to the scheduler failed; the message says what to do."""


def events_nats_url(explicit: str | None, home: Path) -> str:
    return explicit or operator_url(home)


def scheduler_url(explicit: str | None, home: Path) -> str:
    """``explicit`` as given, else the scheduler's default port on loopback in the home's scheme."""
    return (explicit or default_service_url("scheduler", home)).rstrip("/")


class SchedulerApi:
    """The few calls the commands make, with errors turned into readable messages.

    ``verify`` is whom the scheduler's certificate must come from (:func:`symbi_cli.service_http.verify`)."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, *, verify: ssl.SSLContext | bool) -> None:
        self.url = url.rstrip("/")
        # Every request carries the caller's trace context (``traceparent``), so the scheduler's work joins it,
        # and the operator credential.
        self.http = httpx.AsyncClient(
            base_url=self.url,
            timeout=10.0,
            event_hooks={"request": [trace_http_request]},
            headers=dict(headers) if headers is not None else auth_headers(),
            verify=verify,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            r = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TaskCommandError(f"cannot reach the scheduler at {self.url} ({exc}); is `symbi up` running?") from exc
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                message = f"{err['message']} ({err['code']})"
            except (ValueError, KeyError, TypeError):
                message = r.text[:300]
            raise TaskCommandError(f"scheduler refused {method} {path}: {message}")
        body: dict[str, Any] = r.json()
        return body

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/v1/tasks", json=body, headers={"X-Submitted-By": _who()})

    async def task(self, task_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/tasks/{task_id}")

    async def output(self, task_id: str, stream: str, after: int) -> tuple[bytes, dict[str, Any]]:
        """The output on ``stream`` from byte ``after`` to what is stored so far (read page by page); the last
        page's view (its ``next_offset`` and ``done`` cover the whole)."""
        data = bytearray()
        while True:
            params = {"stream": stream, "after": after + len(data)}
            view = await self._call("GET", f"/v1/tasks/{task_id}/output", params=params)
            page = base64.b64decode(view["data_base64"])
            data += page
            if not page or view.get("done", True) or view.get("next_offset") != after + len(data):
                return bytes(data), view


def _who() -> str:
    return f"cli:{os.environ.get('USER') or os.environ.get('USERNAME') or 'unknown'}"


async def _quiet(exc: Exception) -> None:
    """NATS errors while following: the caller falls back to polling the API, so nothing to report."""


async def _events(nats_url: str | None, task_id: str) -> AsyncGenerator[str | None, None]:
    """Event types of the task and its execution as they are stored; ``None`` every ``POLL_S`` without one
    (and always, if NATS cannot be reached: the caller then polls the API)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    nc: Any = None
    if nats_url:
        try:
            nc = await nats.connect(
                **server_options(nats_url),
                connect_timeout=2,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=_quiet,
            )
            js = nc.jetstream()

            async def on_msg(msg: Any) -> None:
                await queue.put((msg.headers or {}).get(H_EVENT_TYPE, ""))

            for subject in (f"evt.task.{task_id}", f"evt.execution.{task_id}"):
                await js.subscribe(
                    subject, cb=on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, headers_only=True
                )
        except Exception:  # no NATS: poll the API
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            nc = None
    try:
        while True:
            event: str | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    event = await queue.get()
            yield event
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()


_STAGES = {
    "task.submitted": "queued",
    "task.assigned": "assigned",
    "execution.started": "running",
    "task.preempted": "preempted, back in the queue",
    "task.suspended": "suspended",
    "task.resumed": "resumed",
    "execution.paused": "paused",
    "execution.resumed": "running",
    "execution.exited": "exited",
    "execution.oom_killed": "out of memory",
    "execution.timed_out": "timed out",
    "execution.killed": "killed",
    "execution.failed": "failed to start",
    "execution.refused": "refused by the sandbox",
}


#: Events after which a followed task may have more output: a chunk, a run's terminal event (which carries the
#: output the run still held at its end), the task's end or its next attempt; None: a poll without NATS.
_MORE_OUTPUT = {None, *OUTPUT_EVENT_TYPES, "task.completed", "task.cancelled", "task.assigned"}


_PAUSED_BECAUSE = {
    "preempted": "to make room for critical work",
    "agent_suspended": "because its agent was suspended",
    "action_denied": "because the policy denied an action; waiting for a policy change and the agent's resume",
}


def _describe(view: dict[str, Any], last_event: str) -> str:
    """The task's state in a few words: where it runs and, when it waits, why."""
    status = view["status"]
    where = f" on {view['host_id']} ({view['tier']}), attempt {view['attempt']}" if view.get("host_id") else ""
    if status == "queued":
        return f"queued ({view['priority']} priority)" + (" — preempted earlier" if view["attempt"] else "")
    if status == "denied":
        reason = (view.get("decision") or {}).get("reason", "")
        return f"suspended: task.allocate denied ({reason}); waiting for the agent to be resumed"
    if status == "paused":
        why = _PAUSED_BECAUSE.get(view.get("pause_reason", ""), "")
        return f"paused{where}" + (f" {why}" if why else "")
    if status in ("completed", "cancelled"):
        return f"{status}{where}: {view.get('outcome') or status}" + (
            f", exit code {view['exit_code']}" if view.get("exit_code") is not None else ""
        )
    stage = "running" if view.get("running") else _STAGES.get(last_event, status)
    return f"{stage}{where}"


async def follow_run(api: SchedulerApi, nats_url: str | None, task_id: str, console: Console) -> dict[str, Any]:
    """Show the task's progress until it ends — a line per change of state, timed from the start, and a
    live status line counting the output — and return its final view."""
    started = time.monotonic()
    view = await api.task(task_id)
    last, chunks, shown = "task.submitted", 0, ""

    def show(view: dict[str, Any]) -> str:
        nonlocal shown
        text = _describe(view, last)
        if text != shown:
            console.print(f"[dim]{time.monotonic() - started:7.3f}s[/] {text}", highlight=False)
            shown = text
        return text + (f" — {chunks} output chunk(s)" if chunks else "")

    with console.status(show(view)) as status:
        async with contextlib.aclosing(_events(nats_url, task_id)) as events:
            async for event in events:
                if event in _STAGES:
                    last = event
                chunks += event == "execution.output"
                if event != "execution.output":
                    view = await api.task(task_id)
                status.update(show(view))
                if view["status"] in ("completed", "cancelled"):
                    return view
    raise AssertionError("the event stream ended")  # pragma: no cover - _events never ends on its own


def task_input(text: str | None, input_file: Path | None) -> bytes:
    if text is not None and input_file is not None:
        raise typer.BadParameter("give INPUT or --input-file, not both")
    if input_file is not None:
        return sys.stdin.buffer.read() if str(input_file) == "-" else input_file.read_bytes()
    return (text or "").encode()


@task_app.command("run")
def run_command(
    agent_id: Annotated[str, typer.Argument(help="The agent to run the task.")],
    text: Annotated[str | None, typer.Argument(metavar="[INPUT]", help="The task's input (its stdin).")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input-file", "-i", help="Read the input from a file ('-': stdin).")
    ] = None,
    priority: Annotated[str, typer.Option("--priority", "-p", help="low, normal, high or critical.")] = "normal",
    cpu: Annotated[float | None, typer.Option("--cpu", help="CPU cores to ask for.")] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="Memory (MB) to ask for.")] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Execution timeout (s) to ask for.")] = None,
    task_id: Annotated[str | None, typer.Option("--task-id", help="Pick the task id (makes retries safe).")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Print the task id and return at once.")] = False,
    url: UrlOption = None,
    nats_url: NatsOption = None,
    home: HomeOption = DEFAULT_HOME,
) -> None:
    """Submit a task, follow its progress live and print its result (the workload's stdout)."""
    console = Console(stderr=True)
    data = task_input(text, input_file)
    resources = {
        k: v
        for k, v in (("cpu_cores", cpu), ("memory_mb", memory), ("execution_timeout_s", timeout_s))
        if v is not None
    }
    body: dict[str, Any] = {"agent_id": agent_id, "priority": priority}
    try:
        body["input"] = data.decode()
    except UnicodeDecodeError:
        body["input_base64"] = base64.b64encode(data).decode()
    if resources:
        body["resources"] = resources
    if task_id:
        body["task_id"] = task_id

    async def run() -> int:
        api = SchedulerApi(scheduler_url(url, home), auth_headers(home), verify=verify(home))
        try:
            view = await api.submit(body)
            tid = view["task_id"]
            if detach:
                typer.echo(tid)
                return 0
            console.print(f"[dim]task {tid} submitted to {api.url}[/dim]")
            started = time.monotonic()
            final = await follow_run(api, events_nats_url(nats_url, home), tid, console)
            out, _ = await api.output(tid, "stdout", 0)
            sys.stdout.buffer.write(out)
            sys.stdout.flush()
            took = time.monotonic() - started
            if final["status"] == "completed" and final["outcome"] == "succeeded":
                console.print(f"[green]succeeded[/green] on {final['host_id']} in {took:.2f} s")
                return 0
            detail = f": {final['detail']}" if final.get("detail") else ""
            console.print(f"[red]{final['outcome'] or final['status']}[/red]{detail} (exit code {final['exit_code']})")
            code = final.get("exit_code")
            return code if isinstance(code, int) and 0 < code < 256 else 1
        finally:
            await api.close()

    with command_trace("cli", "symbi task run", {"symbi.agent_id": agent_id}) as span:
        code = _run(run(), console)
        span.set_attribute("symbi.exit_code", code)
    raise typer.Exit(code)


@task_app.command("logs")
def logs_command(
    task_id: Annotated[str, typer.Argument(help="The task.")],
    stream: Annotated[str, typer.Option("--stream", help="stderr (the log) or stdout (the result).")] = "stderr",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the task ends.")] = False,
    url: UrlOption = None,
    nats_url: NatsOption = None,
    home: HomeOption = DEFAULT_HOME,
) -> None:
    """Print a task's output; with --follow, live until the task ends."""
    console = Console(stderr=True)

    async def logs() -> int:
        api = SchedulerApi(scheduler_url(url, home), auth_headers(home), verify=verify(home))
        offset = 0
        try:

            async def drain() -> dict[str, Any]:
                nonlocal offset
                data, view = await api.output(task_id, stream, offset)
                if data:
                    sys.stdout.buffer.write(data)
                    sys.stdout.flush()
                    offset += len(data)
                return view

            view = await drain()
            if not follow or view["done"]:
                return 0
            async with contextlib.aclosing(_events(events_nats_url(nats_url, home), task_id)) as events:
                async for event in events:
                    if event in _MORE_OUTPUT:
                        view = await drain()
                        if view["done"]:
                            await drain()
                            return 0
        finally:
            await api.close()
        return 0  # pragma: no cover - the loop returns

    raise typer.Exit(_run(logs(), console))


def _run(coro: Any, console: Console) -> int:
    try:
        code: int = asyncio.run(coro)
        return code
    except (TaskCommandError, CliError) as exc:  # CliError: no operator credential, or no usable CA
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
