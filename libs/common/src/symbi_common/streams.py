"""The runtime's JetStream streams and KV buckets (names and configurations), and raw reads (batched direct get).

They are created by :mod:`symbi_common.stream_provisioning` with the NATS ``admin`` credential; services
only check that what they need exists.

``EVENTS`` is the append-only history (``evt.>``): file storage, no per-subject cap, ``discard=new``
with a byte limit so a full store refuses writes instead of dropping history, ``deny_delete`` and
``deny_purge``, a de-duplication window, direct get for batched reads and atomic batch publish for
multi-event appends. ``SNAPSHOTS`` (``snap.>``) keeps one message per subject. The KV bucket
``OPERATOR_REVOCATIONS`` is append-only in effect (:func:`symbi_common.operator_revocations.revocations_config`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from symbi_common.decision_queue import DECISIONS_STREAM
from symbi_common.errors import InfrastructureError, Timeout

EVENTS_STREAM = "EVENTS"
SNAPSHOTS_STREAM = "SNAPSHOTS"
AUDIT_STREAM = "AUDIT"
WORK_STREAM = "WORK"
#: Every root-signed key registry version, in order (written by the operator credential only).
REGISTRY_STREAM = "REGISTRY"
#: KV buckets: per-aggregate data keys (every service, each only its own keys), sandbox hosts
#: (written by sandbox agents, read by the scheduler), the scheduler's lease.
DATAKEYS_BUCKET = "DATAKEYS"
HOSTS_BUCKET = "HOSTS"
SCHEDULER_BUCKET = "SCHEDULER"
#: Sealed runtime secrets (written by the operator's `symbi secrets`, read by the sandbox-agent; docs/secrets.md).
#: One version per name: a replaced value is gone, not history.
SECRETS_BUCKET = "SECRETS"
#: What every service needs before it starts.
REQUIRED_STREAMS = (
    EVENTS_STREAM,
    SNAPSHOTS_STREAM,
    AUDIT_STREAM,
    "KV_" + DATAKEYS_BUCKET,
    REGISTRY_STREAM,
    DECISIONS_STREAM,
)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    replicas: int = 1
    events_max_bytes: int = 10 * 1024**3
    duplicate_window_s: float = 300.0
    max_msg_size: int = 1024 * 1024
    #: The scheduler lease's expiry (KV bucket ``SCHEDULER`` TTL).
    lease_ttl_s: float = 5.0


def events_config(s: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=EVENTS_STREAM,
        subjects=["evt.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        max_msgs=-1,
        max_msgs_per_subject=-1,
        max_bytes=s.events_max_bytes,
        max_msg_size=s.max_msg_size,
        discard=DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
        duplicate_window=s.duplicate_window_s,
        allow_direct=True,
        allow_atomic=True,
    )


def snapshots_config(s: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=SNAPSHOTS_STREAM,
        subjects=["snap.>"],
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        max_msgs_per_subject=1,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    )


def audit_config(s: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=AUDIT_STREAM,
        # Only what must be kept: signed checkpoints and integrity alerts. The live feed (``audit.live.>``)
        # is for whoever listens now and is not stored.
        subjects=["audit.checkpoint", "audit.alert"],
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
        discard=DiscardPolicy.NEW,
    )


def work_config(s: StreamSettings) -> StreamConfig:
    """``WORK``: work items for the sandbox agents (``work.<host_id>``, work-queue retention)."""
    return StreamConfig(
        name=WORK_STREAM,
        subjects=["work.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        duplicate_window=s.duplicate_window_s,
    )


def registry_config(s: StreamSettings) -> StreamConfig:
    """``REGISTRY``: each key registry version as the root signed it (``registry.version``), kept for good."""
    return StreamConfig(
        name=REGISTRY_STREAM,
        subjects=["registry.version"],
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=s.duplicate_window_s,
    )


def bucket_configs(s: StreamSettings) -> list[KeyValueConfig]:
    return [
        KeyValueConfig(bucket=DATAKEYS_BUCKET, history=1, replicas=s.replicas),
        KeyValueConfig(bucket=HOSTS_BUCKET, history=1, replicas=s.replicas),
        KeyValueConfig(bucket=SECRETS_BUCKET, history=1, replicas=s.replicas, direct=True),
        KeyValueConfig(
            bucket=SCHEDULER_BUCKET, history=1, ttl=s.lease_ttl_s, storage=StorageType.FILE, replicas=s.replicas
        ),
    ]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One stored message as read back: subject, stream sequence, exact bytes, headers."""

    subject: str
    sequence: int
    data: bytes
    headers: dict[str, str]


def _raw(msg: Any) -> RawMessage:
    hdrs = msg.headers or {}
    return RawMessage(
        subject=hdrs["Nats-Subject"],
        sequence=int(hdrs["Nats-Sequence"]),
        data=bytes(msg.data),
        headers=hdrs,  # a fresh dict per message from nats-py: no copy needed
    )


class _BatchRead:
    """One batched direct-get request in flight; a subscription callback collects its replies.

    A callback, not ``next_msg``: ``next_msg`` costs a task and a ``wait_for`` per message.
    """

    def __init__(self, nc: NatsClient, stream: str, subject: str) -> None:
        self.nc = nc
        self.stream = stream
        self.subject = subject
        self.out: list[RawMessage] = []
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.sub: Any = None

    @classmethod
    async def open(
        cls, nc: NatsClient, stream: str, subject: str, start: int, batch: int, max_bytes: int
    ) -> _BatchRead:
        self = cls(nc, stream, subject)
        inbox = nc.new_inbox()
        self.sub = await nc.subscribe(inbox, cb=self._on_reply)
        req = json.dumps({"seq": start, "next_by_subj": subject, "batch": batch, "max_bytes": max_bytes})
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", req.encode(), reply=inbox)
        return self

    async def _on_reply(self, msg: Any) -> None:
        self.received += 1
        done = self.done
        if done.done():
            return
        try:
            hdrs = msg.headers or {}
            status = hdrs.get("Status")
            if status is None:
                self.out.append(_raw(msg))
            elif status == "204":  # end of batch
                done.set_result(int(hdrs.get("Nats-Num-Pending", "0")))
            elif status == "404":  # nothing (more) for this subject
                done.set_result(0)
            else:
                done.set_exception(InfrastructureError(f"direct get on {self.stream} failed with status {status}"))
        except Exception as exc:  # a malformed reply fails the read instead of stalling it
            done.set_exception(InfrastructureError(f"direct get on {self.stream} returned a malformed reply: {exc}"))

    async def result(self, timeout: float) -> int:
        """Wait for the end of the batch; ``timeout`` bounds the silence between two replies."""
        seen = 0
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(self.done), timeout)
            except TimeoutError:
                if self.received == seen:
                    raise Timeout(f"reading {self.subject} from {self.stream} timed out") from None
                seen = self.received

    async def close(self) -> None:
        if not self.done.done():
            self.done.cancel()
        if self.sub is not None:
            sub, self.sub = self.sub, None
            await sub.unsubscribe()


async def read_subject(
    nc: NatsClient,
    stream: str,
    subject: str,
    *,
    after: int = 0,
    batch: int = 1000,
    max_bytes: int = 8 * 1024 * 1024,
    timeout: float = 5.0,
) -> AsyncIterator[list[RawMessage]]:
    """Every message of ``subject`` with sequence > ``after``, in batches of up to ``batch``.

    Uses JetStream's batched direct get: one request returns a whole batch (of at most
    ``max_bytes``), so loading an aggregate costs one round trip per batch. The next batch is
    requested before the current one is handed out, so the server prepares it while the caller
    verifies. ``timeout`` bounds the wait for the next reply of a batch, not the whole batch.
    """
    reader: _BatchRead | None = await _BatchRead.open(nc, stream, subject, after + 1, batch, max_bytes)
    try:
        while reader is not None:
            pending = await reader.result(timeout)
            out = reader.out
            await reader.close()
            reader = None
            if pending > 0 and out:
                reader = await _BatchRead.open(nc, stream, subject, out[-1].sequence + 1, batch, max_bytes)
            if out:
                yield out
    finally:
        if reader is not None:
            await reader.close()


async def last_on_subject(nc: NatsClient, stream: str, subject: str, *, timeout: float = 5.0) -> RawMessage | None:
    """The last message stored on ``subject``, or None."""
    try:
        msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout)
    except nats.errors.TimeoutError as exc:
        raise Timeout(f"reading the last message of {subject} timed out") from exc
    except nats.errors.NoRespondersError as exc:
        raise InfrastructureError(f"stream {stream} does not answer; is JetStream up and provisioned?") from exc
    status = (msg.headers or {}).get("Status")
    if status == "404":
        return None
    if status is not None:
        raise InfrastructureError(f"direct get of {subject} failed with status {status}")
    return _raw(msg)
