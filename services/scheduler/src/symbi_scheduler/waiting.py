"""Queries that wait for a task to change (``?wait=`` on a task and on its output) instead of asking again.

A client that wants a task's result asks once with ``wait``: the reply comes as soon as the task has ended
(or its output has grown past the client's offset), or when ``wait`` seconds have passed, whichever is first;
then the reply is the same as without ``wait``. The model tells :class:`TaskChanges` the id of every task an
applied event changed (the task's own events, its execution's), on this replica, whichever replica or host
wrote it; each waiter of that task then looks at its condition again. Nothing is polled.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from symbi_common.errors import ValidationError

#: The longest a query may wait, in seconds: below the idle timeouts of common proxies and load balancers.
MAX_WAIT_S = 30


def check_wait(wait: float) -> None:
    """:class:`ValidationError` on ``wait`` unless it is 0 to :data:`MAX_WAIT_S` seconds."""
    if not (math.isfinite(wait) and 0 <= wait <= MAX_WAIT_S):
        raise ValidationError(f"must be 0 to {MAX_WAIT_S} seconds, got {wait}", field="wait")


class TaskChanges:
    """The queries waiting for tasks to change, by task id."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def changed(self, task_id: str) -> None:
        """Wake every query waiting for ``task_id`` (each looks at its condition again)."""
        for event in self._waiting.get(task_id, ()):
            event.set()

    async def until(self, task_id: str, ready: Callable[[], bool], wait: float) -> None:
        """Return once ``ready()`` holds, checked now and after each change of ``task_id``, or after ``wait``
        seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        event = asyncio.Event()
        self._waiting.setdefault(task_id, set()).add(event)
        try:
            while not ready():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    return
        finally:
            events = self._waiting[task_id]
            events.discard(event)
            if not events:
                del self._waiting[task_id]
