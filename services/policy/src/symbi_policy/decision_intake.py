"""Taking the enforcing processes' decision-log batches from ``DECISIONS`` and storing them as events.

Every process publishes its batches to ``dlog.<service>`` (:mod:`symbi_common.policy.decision_log`); this
intake reads them through the durable consumer ``policy_decisions`` (shared by the policy service's replicas),
stores each with :meth:`PolicyService.log_decisions` and acknowledges it only then, so a batch stays in the
stream until its event is written: a policy service that stops or crashes between the two reads it again,
and the store ignores a batch id it already holds.

A batch is refused — logged, counted and removed, never stored — when it cannot be read or when it claims a
source other than the service whose subject it came on: NATS lets each service publish only its own
``dlog.<service>``, so the subject names the sender and the batch cannot speak for another service. The source must be exactly
``<sender>-<process>`` with no ``-`` in the process part, so no service speaks for another whose name it prefixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import structlog
from nats.js.api import AckPolicy, ConsumerConfig
from symbi_common.consuming import ensure_consumer
from symbi_common.decision_queue import DECISIONS_CONSUMER, DECISIONS_STREAM, decisions_backlog, service_of
from symbi_common.errors import ValidationError
from symbi_common.live_pull import LivePull
from symbi_common.policy.decision_log import LogDecisionsTyped

from symbi_policy.application import PolicyService
from symbi_policy.metrics import DECISION_BACKLOG, DECISION_BATCHES

log = structlog.get_logger(__name__)

#: How long one open pull request waits while no batch comes (the intake's only wake-up when idle).
PULL_EXPIRES_S = 30.0
#: Batches taken per pull; a redelivery waits this long (the store or NATS failed for a moment).
PULL_BATCH = 16
RETRY_DELAY_S = 1.0
#: A batch taken and neither stored nor given back within this (a replica that stopped dead) comes again.
ACK_WAIT_S = 10
#: The process part of a source, ``<service>-<process>`` (:class:`DecisionLog` makes it 12 hex digits). No
#: ``-`` in it: a service whose name is a prefix of another's (``sandbox``, ``sandbox-agent``) cannot pass its
#: batches off as the other's processes (``sandbox-agent-1a2b`` is not a process of ``sandbox``).
PROCESS_RE = re.compile(r"[A-Za-z0-9_]{1,64}")


def refusal(subject: str, body: LogDecisionsTyped) -> str:
    """Why a batch published on ``subject`` may not be stored as ``body`` says ("": it may)."""
    sender = service_of(subject)
    if not sender:
        return f"{subject} is not a decision-log subject (dlog.<service>)"
    process = body.source.removeprefix(sender + "-")
    if process == body.source or not PROCESS_RE.fullmatch(process):
        return f"source {body.source!r} is not a process of {sender} ({sender}-<process>), which published the batch"
    others = sorted({e.service for e in body.entries if e.service != sender})
    if others:
        return f"entries of {', '.join(others)} in a batch of {sender}"
    return ""


class DecisionIntake:
    """Stores every batch in ``DECISIONS``, in stream order, acknowledging each once it is stored."""

    def __init__(self, js: Any, service: PolicyService, *, on_error: Callable[[str], None]) -> None:
        self.js = js
        self.service = service
        self.on_error = on_error
        #: Batches stored (duplicates included) and refused since start.
        self.stored = 0
        self.refused = 0

    async def start(self, spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]) -> None:
        config = ConsumerConfig(
            name=DECISIONS_CONSUMER,
            durable_name=DECISIONS_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_deliver=-1,
        )
        await ensure_consumer(self.js, DECISIONS_STREAM, config)
        feed = LivePull(self.js, DECISIONS_STREAM, DECISIONS_CONSUMER, batch=PULL_BATCH, expires=PULL_EXPIRES_S)
        spawn(self._run(await feed.open()), "policy:decision-intake")

    async def refresh_metrics(self) -> None:
        DECISION_BACKLOG.set(await decisions_backlog(self.js))

    async def _run(self, feed: LivePull) -> None:
        msgs: list[Any] = []
        try:
            while True:
                try:
                    msgs = await feed.take(PULL_BATCH, timeout=PULL_EXPIRES_S)
                except Exception as exc:  # the consumer refused a pull (deleted, moved): pull again shortly
                    self.on_error(f"decision intake: {exc}")
                    await asyncio.sleep(RETRY_DELAY_S)
                    continue
                while msgs:
                    await self._take(msgs[0])
                    msgs.pop(0)
        finally:
            # Stopping: what was taken and not stored goes back at once (a replica or the next start stores
            # it), instead of waiting out the acknowledgement deadline. The pull request is withdrawn first
            # (the server drops a request nobody listens to): it would otherwise be handed the same batches.
            await feed.close()
            for msg in [*msgs, *feed.ready(PULL_BATCH)]:
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def _take(self, msg: Any) -> None:
        try:
            body = msgspec.json.decode(msg.data, type=LogDecisionsTyped)
            reason = refusal(msg.subject, body)
            if reason:
                raise ValidationError(reason, field="source")
            await self.service.log_decisions(body)
        except (msgspec.DecodeError, msgspec.ValidationError, ValidationError) as exc:
            self.refused += 1
            DECISION_BATCHES.labels(outcome="refused").inc()
            log.error("decision-log batch refused", subject=msg.subject, error=str(exc), data=msg.data[:200])
            await msg.term()
            return
        except Exception as exc:  # NATS or the event store failed for a moment: the batch comes again
            self.on_error(f"decision intake: {exc!r}")
            log.warning("decision-log batch not stored, redelivering", subject=msg.subject, error=repr(exc))
            await msg.nak(delay=RETRY_DELAY_S)
            return
        self.stored += 1
        DECISION_BATCHES.labels(outcome="stored").inc()
        await msg.ack()
