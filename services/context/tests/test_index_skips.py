"""Task events that cannot change the index are passed over before verification, and their positions with them.

Two kinds: a type the index ignores (by the event's unsigned type header: a skipped event is never acted on),
and any event of a task without working memories in the store (by the subject the stream stored it under: a
verified event there names that task, and clearing its working memories would delete nothing). Bytes that do
not verify show which deliveries were verified: passed over ones are not counted as rejected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from nats.js import JetStreamContext
from symbi_common.eventstore import H_EVENT_TYPE
from symbi_common.sealing import ChainTip
from symbi_common.settings import Settings
from symbi_context.index import IGNORED_TASK_TYPES, TASK_COMPLETED
from symbi_context.vectors.port import MetaFilter
from symbi_contracts.scheduler.events import CODEC, TaskCompleted, TaskSubmitted

from .conftest import Running

JUNK = b"\x93not an event"
WORKING = MetaFilter(kinds=("working",))


def test_task_completed_is_never_ignored_by_type() -> None:
    assert TASK_COMPLETED not in IGNORED_TASK_TYPES
    assert CODEC.tags > IGNORED_TASK_TYPES


async def store_working(running: Running, task_id: str) -> int:
    memory = {"kind": "working", "text": f"Scratch of {task_id}.", "origin": {"task_id": task_id}}
    out = await running.post("/v1/memories", {"agent_id": "ada", "memories": [memory]}, 201)
    assert await running.index.wait_for(out["sequence"])
    return int(out["sequence"])


async def publish(js: JetStreamContext, subject: str, label: str) -> int:
    return int((await js.publish(subject, JUNK, headers={H_EVENT_TYPE: label} if label else None)).seq)


async def test_task_events_without_effect_are_skipped_unverified(
    running: Running, js: JetStreamContext, make_store: Any
) -> None:
    index = running.index
    for task_id in ("busy-1", "busy-2"):
        await store_working(running, task_id)
    # Junk on a task that has no working memories: passed over whatever its label.
    for label in ("task.completed", "task.renamed", ""):
        await publish(js, "evt.task.quiet-1", label)
    # Junk on a task with working memories: passed over only with an ignored type.
    await publish(js, "evt.task.busy-1", "task.submitted")
    for label in ("task.completed", "task.renamed", ""):
        last = await publish(js, "evt.task.busy-1", label)
    assert await index.wait_for(last)
    assert (index.skipped, index.rejected) == (4, 3)
    assert await index.store.count(WORKING) == 2

    # Genuine events: the submission is skipped by its type, the completion clears its task's working memory.
    scheduler = await make_store("scheduler")
    submitted = TaskSubmitted(agent_id="ada", input=b"", priority="normal")
    tip = (await scheduler.append("task", "busy-2", [submitted], CODEC, expected=ChainTip()))[-1].tip
    completed = TaskCompleted(outcome="succeeded", attempt=1)
    done = (await scheduler.append("task", "busy-2", [completed], CODEC, expected=tip))[-1].sequence
    assert await index.wait_for(done)
    assert index.position >= done
    assert await index.store.count(WORKING) == 1
    assert (index.skipped, index.rejected) == (5, 3)
    # Completed and cleared: its later events are passed over like those of any task without working memories.
    last = await publish(js, "evt.task.busy-2", "task.completed")
    assert await index.wait_for(last)
    assert (index.skipped, index.rejected) == (6, 3)


async def test_tasks_with_working_memories_are_known_after_a_restart(
    start: Callable[[Settings], AsyncIterator[Running]], settings: Settings, js: JetStreamContext, make_store: Any
) -> None:
    async for first in start(settings):
        stored = [await store_working(first, task_id) for task_id in ("long-1", "long-2")]
    async for again in start(settings):
        # Nothing of the first run is replayed (its position was stored on stop): the store tells the tasks.
        assert await again.index.store.position() >= max(stored)
        junk = await publish(js, "evt.task.long-2", "task.completed")
        assert await again.index.wait_for(junk)
        assert (again.index.skipped, again.index.rejected) == (0, 1)
        scheduler = await make_store("scheduler")
        done = TaskCompleted(outcome="succeeded", attempt=1)
        recs = await scheduler.append("task", "long-1", [done], CODEC, expected=ChainTip())
        assert await again.index.wait_for(recs[-1].sequence)
        assert await again.index.store.count(WORKING) == 1
