"""The ``symbi`` command: ``up`` (the local runtime) and ``demo`` here, the others in :mod:`symbi_cli.lazy_commands`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from symbi_cli.errors import CliError, SupervisorError
from symbi_cli.lazy_commands import LazyGroup
from symbi_cli.runtime_options import DEFAULT_BASE_PORT, DEFAULT_NATS_PORT, RuntimeOptions, parse_services

if TYPE_CHECKING:
    from symbi_cli.runtime import LocalRuntime

app = typer.Typer(
    name="symbi",
    help="Symbi: an event-sourced, policy-driven runtime for autonomous agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=LazyGroup,  # keys, run, status …: symbi_cli.lazy_commands, each imported when it runs
)

#: Exit code after SIGINT/SIGTERM interrupted start-up (the shell convention for Ctrl-C).
EXIT_INTERRUPTED = 130

HomeOption = Annotated[
    Path, typer.Option("--home", help="Runtime directory: keys, nats and pg data, logs.", envvar="SYMBI_HOME")
]
ServicesOption = Annotated[
    str, typer.Option("--services", help="Comma-separated services to run, or 'all'.", show_default=True)
]
BasePortOption = Annotated[
    int, typer.Option("--base-port", help="Service ports are base+1 (lifecycle) … base+6 (context).")
]
NatsPortOption = Annotated[int, typer.Option("--nats-port", help="nats-server client port; 0 picks a free one.")]
GraceOption = Annotated[
    float, typer.Option("--grace-period", help="Seconds between SIGTERM and SIGKILL when stopping a service.")
]
ReadyTimeoutOption = Annotated[float, typer.Option("--ready-timeout", help="Seconds to wait for every /readyz.")]


def build_options(home: Path, services: str, base_port: int, nats_port: int, grace_period: float) -> RuntimeOptions:
    return RuntimeOptions(
        home=home,
        services=parse_services(services),
        base_port=base_port,
        nats_port=nats_port or None,
        grace_period=grace_period,
    )


def print_runtime_table(console: Console, runtime: LocalRuntime) -> None:
    table = Table(title=f"symbi runtime ({runtime.home})")
    table.add_column("component", style="bold")
    table.add_column("address")
    table.add_column("pid", justify="right")
    table.add_column("status")
    nats = runtime.nats
    table.add_row("nats-server", runtime.nats_public_url, str(nats.pid if nats else ""), "running")
    pg = runtime.state().get("postgres")
    if isinstance(pg, dict):
        table.add_row("postgresql", str(pg["data_dir"]), str(pg["pid"]), "running")
    else:
        table.add_row("postgresql", "SYMBI_DATABASE_URL", "", "external")
    for service in runtime.running_services:
        st = runtime.supervisor.status(service) if runtime.supervisor is not None else None
        if st is None or not st.running:
            status, pid = "[red]restarting[/]", ""
        else:
            status, pid = ("[green]ready[/]" if st.ready else "[yellow]not ready[/]"), str(st.pid)
        table.add_row(service, runtime.url_of(service), pid, status)
    console.print(table)


async def run_up(options: RuntimeOptions, console: Console, *, ready_timeout: float) -> int:
    """``symbi up``: start everything, supervise until SIGINT/SIGTERM, stop everything."""
    from symbi_cli.runtime import LocalRuntime
    from symbi_cli.ui import ConsoleReporter, Interrupted, stop_signals, unless_stopped, wait_ready_with_progress

    runtime = LocalRuntime(options, ConsoleReporter(console))
    with stop_signals() as stop:
        try:
            await unless_stopped(runtime.start(), stop)
            try:
                await wait_ready_with_progress(runtime, console, stop, ready_timeout)
                console.print("[bold green]all services ready[/]")
            except SupervisorError as exc:
                # Keep running: the supervisor keeps restarting, and the output above says why.
                console.print(f"[yellow]warning:[/] {str(exc).splitlines()[0]}; see its output above")
            print_runtime_table(console, runtime)
            console.print("press Ctrl-C to stop")
            await stop.wait()
            console.print("stopping …")
            return 0
        except Interrupted:
            console.print("interrupted; stopping what was started …")
            return EXIT_INTERRUPTED
        finally:
            await runtime.stop()
            console.print("stopped")


@app.command()
def up(
    home: HomeOption = Path(".symbi"),
    services: ServicesOption = "all",
    base_port: BasePortOption = DEFAULT_BASE_PORT,
    nats_port: NatsPortOption = DEFAULT_NATS_PORT,
    grace_period: GraceOption = 10.0,
    ready_timeout: ReadyTimeoutOption = 60.0,
) -> None:
    """Run the runtime locally: nats-server, PostgreSQL and each service in its own supervised process."""
    console = Console()
    try:
        options = build_options(home, services, base_port, nats_port, grace_period)
        code = asyncio.run(run_up(options, console, ready_timeout=ready_timeout))
    except CliError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def demo(
    home: HomeOption = Path(".symbi"),
    base_port: BasePortOption = DEFAULT_BASE_PORT,
    nats_port: NatsPortOption = DEFAULT_NATS_PORT,
    agents_dir: Annotated[
        Path | None, typer.Option("--agents-dir", help="Where hello.json and invalid.json are.")
    ] = None,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="Leave the runtime up afterwards.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide the services' own log lines.")] = False,
    grace_period: GraceOption = 10.0,
    ready_timeout: ReadyTimeoutOption = 60.0,
) -> None:
    """Bring the runtime up, run its main job (hello.symbi → result, memory, verified audit receipt), then walk
    an agent through its lifecycle and show its signed event history."""
    from symbi_cli.demo import run_demo

    console = Console()
    try:
        options = build_options(home, "all", base_port, nats_port, grace_period)
        # A checkpoint every 2 s (not 10): the main job's audit receipt waits for one covering its task.
        env = {"SYMBI_AUDIT__CHECKPOINT_INTERVAL_S": "2", **os.environ}
        options = dataclasses.replace(options, env=env)
        code = asyncio.run(
            run_demo(
                options,
                console,
                agents_dir=agents_dir,
                keep_running=keep_running,
                show_output=not quiet,
                ready_timeout=ready_timeout,
            )
        )
    except CliError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
