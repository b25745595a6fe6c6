"""Terminal output shared by ``symbi up`` and ``symbi demo``: service-prefixed lines in colour."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.text import Text

from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import ALL_SERVICES
from symbi_cli.supervisor import EventKind

T = TypeVar("T")

_SERVICE_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "bright_red")
_EVENT_STYLES: dict[EventKind, str] = {"info": "dim", "ready": "bold green", "warning": "yellow", "error": "bold red"}


class ConsoleReporter:
    """Prints runtime progress, service output (prefixed with the service name) and supervisor events."""

    def __init__(self, console: Console, *, show_output: bool = True) -> None:
        self.console = console
        self.show_output = show_output
        self._width = max(len(s) for s in ALL_SERVICES)

    def _prefix(self, service: str) -> Text:
        index = ALL_SERVICES.index(service) if service in ALL_SERVICES else len(service)
        style = _SERVICE_STYLES[index % len(_SERVICE_STYLES)]
        return Text(f"{service:>{self._width}} | ", style=style)

    def step(self, message: str) -> None:
        self.console.print(Text.assemble(("symbi", "bold"), " ", message))

    def output(self, service: str, line: str) -> None:
        if self.show_output:
            # Text (not markup): a service's output must never be interpreted as rich markup.
            self.console.print(self._prefix(service) + Text(line), soft_wrap=True, highlight=False)

    def event(self, service: str, message: str, kind: EventKind) -> None:
        self.console.print(self._prefix(service) + Text(f"[supervisor] {message}", style=_EVENT_STYLES[kind]))


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived before the awaited work was done."""


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT/SIGTERM for the duration of the block (instead of KeyboardInterrupt)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T:
    """Await ``work``; if ``stop`` is set first, cancel it and raise :class:`Interrupted`."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise Interrupted
    return task.result()


async def wait_ready_with_progress(
    runtime: LocalRuntime, console: Console, stop: asyncio.Event, timeout: float
) -> None:
    """Wait for every service's ``/readyz`` with a spinner; raises on timeout or interruption."""
    names = ", ".join(runtime.running_services) or "nothing"
    with console.status(f"waiting for /readyz of {names}"):
        await unless_stopped(runtime.wait_ready(timeout), stop)
