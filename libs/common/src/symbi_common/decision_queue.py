"""The ``DECISIONS`` stream: every enforcing process's decision-log batches until the policy service stores them.

A process publishes each batch of its decisions to ``dlog.<service>`` (its NATS user may publish that subject
and no other service's), with the batch id as ``Nats-Msg-Id``; JetStream's acknowledgement means the batch is
on disk (and on a quorum of replicas), so a decision survives its process stopping or crashing while the policy
service is away. The policy service takes the batches through one durable consumer, stores each as its
decision-log event and only then acknowledges it (work-queue retention: a stored batch leaves the stream).
A full stream refuses new batches (``discard=new``) instead of dropping any: the process keeps them queued and
its enforcement waits, as for any other failure to store its log.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from symbi_common.errors import Timeout

DECISIONS_STREAM = "DECISIONS"
#: The policy service's durable consumer of the whole stream (its replicas share it).
DECISIONS_CONSUMER = "policy_decisions"
_PREFIX = "dlog."
#: Batches the stream holds at most while the policy service does not take them (by size).
DECISIONS_MAX_BYTES = 2 * 1024**3


def decisions_subject(service: str) -> str:
    """Where ``service`` publishes its decision-log batches."""
    return _PREFIX + service


def service_of(subject: str) -> str:
    """The service that published a batch on ``subject`` (``dlog.<service>``); "" for any other subject."""
    service = subject.removeprefix(_PREFIX)
    return service if service != subject and "." not in service else ""


def decisions_config(replicas: int, duplicate_window_s: float, max_msg_size: int) -> StreamConfig:
    return StreamConfig(
        name=DECISIONS_STREAM,
        subjects=[_PREFIX + "*"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_bytes=DECISIONS_MAX_BYTES,
        max_msg_size=max_msg_size,
        discard=DiscardPolicy.NEW,
        duplicate_window=duplicate_window_s,
    )


async def decisions_backlog(js: Any) -> int:
    """Batches in ``DECISIONS`` the policy service has not stored yet (a stored batch is removed)."""
    info = await js.stream_info(DECISIONS_STREAM)
    return int(info.state.messages)


async def wait_decisions_stored(js: Any, timeout: float = 10.0) -> None:
    """Wait until the policy service has stored every batch published so far (the stream is empty)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (left := await decisions_backlog(js)) > 0:
        if asyncio.get_running_loop().time() > deadline:
            raise Timeout(f"{left} decision-log batches still in {DECISIONS_STREAM} after {timeout} s")
        await asyncio.sleep(0.02)
