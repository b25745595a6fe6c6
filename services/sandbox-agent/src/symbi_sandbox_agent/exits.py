"""Exit codes of this host's containers from one stream of the engine's ``die`` events.

A run learns its container's exit code from the event stream instead of a ``wait`` call of its own: one
Docker API call (and its HTTP request and response in Python) per task less. One thread reads the stream
for the whole daemon and hands each exit to the event loop. The stream replays from a second before it was
(re)opened (the engine keeps its recent events), so an exit is not missed across a reconnect, and a run
that hears nothing within its grace (the stream is down or slow) asks the engine with ``wait`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: How many exits nobody has asked for yet are kept (a run asks right after its output ends).
KEPT = 4096
#: Pause before the stream is opened again after it broke.
REOPEN_S = 1.0

#: Opens the stream of ``die`` events of this host's containers since a Unix time (blocking); closable.
OpenEvents = Callable[[int], Iterator[dict[str, Any]]]


def exit_of(event: dict[str, Any]) -> tuple[str, int] | None:
    """``(container id, exit code)`` of a ``die`` event; None for anything else. Pure."""
    if event.get("Type", "container") != "container" or event.get("Action", event.get("status")) != "die":
        return None
    actor = event.get("Actor") or {}
    container_id = str(actor.get("ID") or event.get("id") or "")
    try:
        code = int((actor.get("Attributes") or {})["exitCode"])
    except (KeyError, TypeError, ValueError):
        return None
    return (container_id, code) if container_id else None


class ExitWatch:
    """The exits of this host's containers, as the engine reports them (see the module's docstring)."""

    def __init__(self, open_events: OpenEvents) -> None:
        self._open = open_events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exits: OrderedDict[str, int] = OrderedDict()
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._stream: Any = None
        self._closing = False
        #: Whether the stream is open (a run does not wait for an event that cannot come).
        self.connected = False

    def start(self) -> None:
        """Start reading the stream (on a thread of its own) for the running loop."""
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, name="docker-exits", daemon=True).start()

    def close(self) -> None:
        self._closing = True
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()

    async def exit_code(self, container_id: str, timeout: float) -> int | None:
        """The container's exit code once the engine reports it; None if it does not within ``timeout`` (or
        the stream is down): then ask the engine."""
        if container_id in self._exits:
            return self._exits.pop(container_id)
        if not self.connected:
            return None
        waiting = self._waiting[container_id] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(container_id, None)

    def _deliver(self, container_id: str, code: int) -> None:  # on the loop
        waiting = self._waiting.pop(container_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(code)
            return
        self._exits[container_id] = code
        while len(self._exits) > KEPT:
            self._exits.popitem(last=False)

    def _read(self) -> None:  # on its own thread
        assert self._loop is not None
        since = int(time.time()) - 1  # replayed from here: what happened while the stream was being opened
        while not self._closing:
            try:
                self._stream = self._open(since)
                self.connected = True
                for event in self._stream:
                    since = max(since, int(event.get("time") or 0))  # a reopened stream replays from here
                    found = exit_of(event)
                    if found is not None:
                        self._loop.call_soon_threadsafe(self._deliver, *found)
            except Exception as exc:
                if not self._closing:
                    log.warning("the engine's event stream broke; reopening it", error=str(exc))
            self.connected = False
            if not self._closing:
                time.sleep(REOPEN_S)
