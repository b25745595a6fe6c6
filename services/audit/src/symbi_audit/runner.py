"""The live verifier: follows the whole ``EVENTS`` stream from its first event, exactly once.

It reads through a :class:`symbi_common.follower.Follower` in batch mode and keeps its position in
PostgreSQL, written in the same transaction as everything a batch produced (tree nodes, event metadata,
findings, chain tips, checkpoints; :class:`~symbi_common.positions.HandlerPositions`). It is not a
``Projection`` because it must see a whole batch at once — to verify its signatures on several
threads — and must never skip an event that fails verification: a failure is a finding, and the
event is still a leaf of the tree.

After the commit, and only then, the batch is acknowledged, findings go out on ``audit.alert``,
checkpoints to the ``AUDIT`` stream and events to the live feed. A crash before the commit loses
nothing (the events come again); a crash after it repeats nothing (events at or below the stored
position are skipped, and on any error the in-memory state is reloaded from PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
import structlog
from opentelemetry import trace
from prometheus_client import Counter, Gauge
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeys
from symbi_common.errors import SymbiError
from symbi_common.eventstore import H_EVENT_TYPE
from symbi_common.follower import Delivery, Follower
from symbi_common.keyring import KeyRegistry
from symbi_common.positions import HandlerPositions, Unit
from symbi_common.reader import decode_opened
from symbi_common.sealing import OpenedEvent
from symbi_common.settings_sections import AuditSettings
from symbi_common.streams import RawMessage
from symbi_common.telemetry import SECURITY_EVENTS, extract_trace, observe_consumed, tracing_enabled
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.offline import CHECKPOINT_SUBJECT
from symbi_tlog.rules import CachedRegistry, Checked, Finding, LogVerifier, authenticate_all

from symbi_audit.attribution import AgentAttribution
from symbi_audit.erasure import AGGREGATE_TYPE, CODEC, ErasureExecuted, ErasureRequested
from symbi_audit.host_reports import HostReports
from symbi_audit.live import LiveFeed, event_item
from symbi_audit.revocations import Revocations
from symbi_audit.store import AuditStore, Batch, StoredCheckpoint
from symbi_audit.witnesses import WitnessPool

log = structlog.get_logger(__name__)

ALERT_SUBJECT = "audit.alert"
#: A finding: an authentic event carries a clear type header that names another type.
HEADER_MISMATCH = "header_mismatch"
#: Live events arrive one by one; committing each alone cost about 1 ms of CPU in this process (a
#: transaction of six statements, an ack) and more in PostgreSQL. A quarter second gathers a task's events
#: into one or two commits: 1.4 ms less CPU per task than 50 ms did (audit and PostgreSQL, bench/RESULTS.md),
#: for findings and the live feed at most that much later. Nothing waits on the audit log to go on.
LINGER_S = 0.25

FINDINGS = Counter("symbi_audit_findings_total", "Verification failures found in the event log", ["kind"])
VERIFIED = Counter("symbi_audit_events_total", "Events verified by the audit service", ["outcome"])
POSITION = Gauge("symbi_audit_position", "Last stream sequence verified")
TREE_SIZE = Gauge("symbi_audit_tree_size", "Leaves in the audit Merkle tree")
CHECKPOINTS = Counter("symbi_audit_checkpoints_total", "Signed checkpoints created")
CONSUMER = "audit_verifier"

_json = msgspec.json.Encoder()


def _time(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


def _event_row(c: Checked, leaf_index: int, stored_at: dt.datetime | None, agent_id: str | None) -> tuple[Any, ...]:
    m = c.message
    if c.opened is None:
        return (m.sequence, leaf_index, m.subject, *([None] * 11), stored_at, False, None)
    h = c.opened.header
    return (
        m.sequence, leaf_index, m.subject, h.aggregate_type, h.aggregate_id, h.aggregate_version, h.event_type,
        h.producer, h.signing_key_id, h.event_id, h.correlation_id, h.causation_id, h.data_key_id,
        _time(h.occurred_at), stored_at, not c.findings, agent_id,
    )  # fmt: skip


def _mislabelled(msgs: list[Delivery], checked: list[Checked]) -> list[Finding]:
    """Authentic events whose clear ``Symbi-Event-Type`` header names another type than the signed one.

    The header is outside the signature; consumers use it only to pass over events they would not act on
    (docs/architecture.md), so a header that lies could hide an event from them: that is a finding here."""
    labels = {m.sequence: m.headers.get(H_EVENT_TYPE) for m in msgs}
    out: list[Finding] = []
    for c in checked:
        label = labels.get(c.message.sequence)
        if c.opened is not None and label is not None and label != c.opened.header.event_type:
            reason = f"the {H_EVENT_TYPE} header says {label!r}, the signed event is {c.opened.header.event_type!r}"
            out.append(
                Finding(kind=HEADER_MISMATCH, sequence=c.message.sequence, subject=c.message.subject, reason=reason)
            )
    return out


def _trace_verified(msgs: list[Delivery], checked: list[Checked], started_ns: int) -> None:
    """One ``audit.verify`` span per verified event that carries a trace, as a child of the span that
    appended it, from the start of its batch to now: so a task's trace shows each of its events verified."""
    tracer = trace.get_tracer("symbi.audit")
    headers = {m.sequence: m.headers for m in msgs if "traceparent" in m.headers}
    for c in checked:
        carried = headers.get(c.message.sequence)
        if carried is None:
            continue
        span = tracer.start_span(
            "audit.verify",
            context=extract_trace(carried),
            kind=trace.SpanKind.CONSUMER,
            start_time=started_ns,
            attributes={
                "symbi.subject": c.message.subject,
                "symbi.sequence": c.message.sequence,
                "symbi.audit.verified": not c.findings,
            },
        )
        if c.findings:
            span.set_attribute("symbi.audit.findings", [f.kind for f in c.findings])
        span.end()


class VerifierRunner:
    """Verifies every event, grows the tree, signs checkpoints; runs until :meth:`stop`."""

    def __init__(
        self,
        *,
        js: Any,
        nc: Any,
        store: AuditStore,
        registry: KeyRegistry,
        signer: Signer,
        datakeys: DataKeys,
        settings: AuditSettings,
        live: LiveFeed,
        witnesses: WitnessPool | None = None,
        linger: float = LINGER_S,
    ) -> None:
        self.witnesses = witnesses
        #: After a short batch, how long to wait for more events before verifying them together.
        self.linger = linger
        self.hold: Callable[[], bool] = lambda: False
        """True while the log guard reports the stream missing, shorter or rolled back."""
        self.js = js
        self.nc = nc
        self.store = store
        self.registry = CachedRegistry(registry)
        #: A newer registry's revocations applied to events verified before it (each batch, and when idle).
        self.revocations = Revocations(registry, store)
        self.signer = signer
        self.datakeys = datakeys
        #: Which agent each event concerns (kept on its row and live item).
        self.agents = AgentAttribution(datakeys, store)
        #: Execution events a host key signed about another host's attempt (findings).
        self.host_reports = HostReports(nc, self.registry, datakeys)
        self.settings = settings
        self.live = live
        self.key_name = signer.key_id
        threads = settings.verify_threads or os.cpu_count() or 1
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify")
        self.rules = LogVerifier()
        self.tree = TreeBuilder()
        self.last_checkpoint_size = 0
        self.last_checkpoint_at = time.monotonic()
        self._stopping = asyncio.Event()
        self._publish_due = asyncio.Event()
        # commit_batch stores the position with the batch's rows (one transaction): the handler's own.
        self.follower = Follower(
            js,
            service="audit",
            name="verifier",
            subjects=("evt.>",),
            positions=HandlerPositions(lambda: self.position),
            handler=self._process,
            batch=settings.batch,
            linger=linger,
            hold=lambda: self.hold(),
            on_start=self._publish_checkpoints,
            on_idle=self._checkpoint_if_due,
            # After a failure the verifier state is reloaded from PostgreSQL: the batch in flight may be
            # half-applied in memory but was rolled back in the database.
            on_retry=self._load,
        )
        self.ready = self.follower.ready

    def use_signer(self, signer: Signer) -> None:
        """Sign the next checkpoints with ``signer`` (a rotated audit key), no restart needed."""
        self.signer = signer
        self.key_name = signer.key_id

    async def setup(self) -> None:
        await self.store.setup()
        await self._load()

    async def _load(self) -> None:
        state, size, frontier = await self.store.load_state()
        self.rules = LogVerifier(state)
        self.tree = TreeBuilder(size, frontier)
        latest = await self.store.checkpoint()
        self.last_checkpoint_size = latest.size if latest else 0
        POSITION.set(state.last_sequence)
        TREE_SIZE.set(size)

    @property
    def position(self) -> int:
        return self.rules.state.last_sequence

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        publisher = asyncio.create_task(self._publisher(), name="audit:publisher")
        try:
            await self.follower.run()
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    async def stop(self) -> None:
        self._stopping.set()
        await self.follower.stop()

    async def _process(self, unit: Unit, msgs: list[Delivery]) -> None:
        """Verify a batch and commit its rows with the new position (``commit_batch``), then tell the world."""
        await self.revocations.catch_up()
        started_ns = time.time_ns()
        start = unit.position
        raws = [RawMessage(m.subject, m.sequence, m.data, {}) for m in msgs]
        stored_at = {m.sequence: m.stored_at for m in msgs}
        if len(raws) > 64:
            auths = await asyncio.to_thread(authenticate_all, raws, self.registry, self.executor)
        else:
            auths = authenticate_all(raws, self.registry)
        self.rules.changed.clear()
        checked = self.rules.check_all(raws, auths)
        # Findings about authentic events: a lying type header, a host writing about another host's task.
        also_found = _mislabelled(msgs, checked)
        batch = Batch(self.position, 0, [], [], [], {}, [], [])
        new_checkpoints: list[Checkpoint] = []
        agents: list[str | None] = []
        for c in checked:
            if c.opened is not None and not c.findings:
                foreign = await self.host_reports.finding(c.opened, c.message.subject)
                if foreign is not None:
                    also_found.append(foreign)
            agent_id = await self.agents.agent_of(c.opened) if c.opened is not None else None
            agents.append(agent_id)
            batch.events.append(_event_row(c, self.tree.size, stored_at.get(c.message.sequence), agent_id))
            batch.nodes.extend(self.tree.append(c.leaf))
            batch.findings.extend(c.findings)
            if c.opened is not None and c.opened.header.aggregate_type == AGGREGATE_TYPE and not c.findings:
                erasure = await self._erasure_row(c.opened)
                if erasure is not None:
                    batch.erasures.append(erasure)
            if self.tree.size - self.last_checkpoint_size >= self.settings.checkpoint_every:
                cp = self._checkpoint()
                batch.checkpoints.append(
                    (cp.size, cp.root, c.message.sequence, sign_checkpoint(cp, self.signer, self.key_name))
                )
                new_checkpoints.append(cp)
        batch.findings.extend(also_found)
        batch.tree_size = self.tree.size
        batch.tips = {s: self.rules.state.tips[s] for s in self.rules.changed}
        if not await self.store.commit_batch(batch, expected_sequence=start):
            raise SymbiError("the stored audit position moved under this verifier; reloading")
        await self._after_commit(checked, agents, batch.findings)
        observe_consumed(CONSUMER, msgs[-1].stored_at, len(raws))
        if tracing_enabled():
            _trace_verified(msgs, checked, started_ns)
        if new_checkpoints:
            CHECKPOINTS.inc(len(new_checkpoints))
            await self._publish_checkpoints()

    def _checkpoint(self) -> Checkpoint:
        self.last_checkpoint_size = self.tree.size
        self.last_checkpoint_at = time.monotonic()
        return Checkpoint(self.settings.origin, self.tree.size, self.tree.root())

    async def _erasure_row(self, opened: OpenedEvent) -> tuple[str, str, Any] | None:
        try:
            event = (await decode_opened(opened, self.datakeys, CODEC)).event
        except SymbiError as err:
            log.warning("audit event unreadable", sequence=opened.sequence, error=err.message)
            return None
        at = _time(opened.header.occurred_at)
        if isinstance(event, ErasureRequested):
            return "requested", opened.header.aggregate_id, (
                event.aggregate, event.requested_by, event.reason, opened.sequence, at,
            )  # fmt: skip
        if isinstance(event, ErasureExecuted):
            return "executed", opened.header.aggregate_id, (event.aggregate, opened.sequence, at)
        return None  # pragma: no cover - the codec knows only these two

    async def _after_commit(self, checked: list[Checked], agents: list[str | None], findings: list[Finding]) -> None:
        POSITION.set(self.position)
        TREE_SIZE.set(self.tree.size)
        bad = sum(1 for c in checked if c.findings)
        VERIFIED.labels("verified").inc(len(checked) - bad)
        VERIFIED.labels("failed").inc(bad)
        for f in findings:
            FINDINGS.labels(f.kind).inc()
            SECURITY_EVENTS.labels("audit_finding").inc()
            log.warning("audit finding", kind=f.kind, sequence=f.sequence, subject=f.subject, reason=f.reason)
            await self._notify(ALERT_SUBJECT, _json.encode(f))
        for c, agent_id in zip(checked, agents, strict=True):
            item = event_item(c, agent_id)
            if item is not None:
                self.live.publish(item)
                subject = f"{self.settings.live_subject}.{item.aggregate_type}.{item.aggregate_id}.{item.event_type}"
                await self._notify(subject, _json.encode(item))

    async def _notify(self, subject: str, body: bytes) -> None:
        """Core publish (buffered by the client). Findings are stored in PostgreSQL already, so a
        notification lost to a broken connection costs a subscriber a message, not the record."""
        try:
            await self.nc.publish(subject, body)
        except nats.errors.Error as exc:
            log.warning("notification not sent", subject=subject, error=str(exc))

    async def _checkpoint_if_due(self) -> None:
        await self.revocations.catch_up()
        due = time.monotonic() - self.last_checkpoint_at >= self.settings.checkpoint_interval_s
        if not due or self.tree.size <= self.last_checkpoint_size:
            return
        cp = self._checkpoint()
        await self.store.add_checkpoint(
            cp.size, cp.root, self.position, sign_checkpoint(cp, self.signer, self.key_name)
        )
        CHECKPOINTS.inc()
        await self._publish_checkpoints()

    async def _publish_checkpoints(self) -> None:
        """Wake the publisher: gathering cosignatures may wait on witnesses, so it never holds up verification."""
        self._publish_due.set()

    async def _publisher(self) -> None:
        """Publishes stored, unpublished checkpoints in order, when woken and every ``checkpoint_interval_s``
        (so a checkpoint held back for lack of cosignatures goes out once the witnesses answer again)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publish_due.wait(), timeout=self.settings.checkpoint_interval_s)
            self._publish_due.clear()
            try:
                for cp in await self.store.unpublished_checkpoints():
                    if not await self._publish(cp):
                        break  # in order: a later checkpoint waits for an earlier one
            except (SymbiError, OSError, asyncpg.PostgresError) as exc:
                log.warning("checkpoints not published yet", error=str(exc))

    async def _publish(self, cp: StoredCheckpoint) -> bool:
        note = cp.note
        if self.witnesses is not None and self.witnesses.enabled:
            cosigned = await self.witnesses.cosign(cp.note, cp.size)
            if cosigned is None:
                return False  # not enough cosignatures: stays unpublished, asked again later
            if cosigned != cp.note:
                await self.store.replace_note(cp.size, cosigned)
            note = cosigned
        headers = {"Nats-Msg-Id": f"checkpoint:{self.settings.origin}:{cp.size}", "Symbi-Tree-Size": str(cp.size)}
        try:
            await self.js.publish(CHECKPOINT_SUBJECT, note.encode(), headers=headers)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("checkpoint not published yet", size=cp.size, error=str(exc))
            return False
        await self.store.mark_published(cp.size)
        return True

    async def wait_for(self, sequence: int, timeout: float = 5.0) -> bool:
        """Wait until events up to stream ``sequence`` are verified and committed."""
        return await self.follower.wait_for(sequence, timeout)
