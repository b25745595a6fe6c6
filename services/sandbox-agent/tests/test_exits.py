"""Exit codes from the engine's die events: read right, delivered to whoever asks first or later, and a
stream that is down or silent sends the run back to ``wait``."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from symbi_sandbox_agent.exits import ExitWatch, exit_of
from symbi_sandbox_agent.spec import LABEL_HOST


def die(container_id: str, code: int | str) -> dict[str, Any]:
    return {
        "Type": "container",
        "Action": "die",
        "Actor": {"ID": container_id, "Attributes": {"exitCode": str(code)}},
        "time": int(time.time()),
    }


def test_a_die_event_gives_the_container_and_its_exit_code() -> None:
    assert exit_of(die("c1", 0)) == ("c1", 0)
    assert exit_of(die("c2", 137)) == ("c2", 137)
    assert exit_of({"status": "die", "id": "c3", "Actor": {"Attributes": {"exitCode": "3"}}}) == ("c3", 3)
    assert exit_of({**die("c4", 0), "Action": "start"}) is None
    assert exit_of({**die("c5", 0), "Type": "network"}) is None
    assert exit_of(die("c6", "x")) is None
    assert exit_of({"Action": "die", "Actor": {"ID": "c7", "Attributes": {}}}) is None


class Feed:
    """A stream of events fed by the test; closing it ends the iteration."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.closed = threading.Event()
        self.opened_since: list[int] = []

    def open(self, since: int) -> Iterator[dict[str, Any]]:
        self.opened_since.append(since)
        self.ready.set()
        return self._iterate()

    def _iterate(self) -> Iterator[dict[str, Any]]:
        while not self.closed.is_set():
            if self.events:
                yield self.events.pop(0)
            else:
                time.sleep(0.005)

    def close(self) -> None:
        self.closed.set()


async def test_an_exit_reaches_a_run_that_asks_before_or_after_it_happened() -> None:
    feed = Feed()
    watch = ExitWatch(feed.open)
    watch.start()
    try:
        await asyncio.to_thread(feed.ready.wait, 5)
        assert feed.opened_since[0] <= time.time() - 1  # replays from a second before it opened
        feed.events.append(die("early", 3))
        await asyncio.sleep(0.1)
        assert await watch.exit_code("early", 1) == 3  # happened before the run asked
        asking = asyncio.ensure_future(watch.exit_code("late", 5))
        await asyncio.sleep(0.05)
        feed.events.append(die("late", 0))
        assert await asking == 0
        assert await watch.exit_code("never", 0.1) is None  # nothing within the grace: ask the engine
    finally:
        watch.close()
        feed.close()


async def test_a_stream_that_is_not_open_sends_the_run_to_wait_at_once() -> None:
    watch = ExitWatch(lambda since: iter(()))
    assert not watch.connected
    started = time.monotonic()
    assert await watch.exit_code("c", 5) is None
    assert time.monotonic() - started < 1


async def test_the_engine_reports_a_labelled_container_s_exit(docker_client: Any) -> None:
    from symbi_sandbox_agent.docker_host import DockerHost

    host = DockerHost()
    host_id = f"exits-{uuid.uuid4().hex[:8]}"
    watch = ExitWatch(lambda since: host.die_events(host_id, since))
    watch.start()
    container_id = ""
    try:
        for _ in range(100):
            if watch.connected:
                break
            await asyncio.sleep(0.05)
        created = host.api.create_container(
            "symbi/busybox:1", command=["sh", "-c", "exit 7"], labels={LABEL_HOST: host_id}
        )
        container_id = created["Id"]
        host.api.start(container_id)
        assert await watch.exit_code(container_id, 10) == 7
    finally:
        watch.close()
        if container_id:
            host.api.remove_container(container_id, force=True)
        host.close()
