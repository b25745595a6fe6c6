"""Execution events a sandbox host's own key signed about an attempt placed on another host: a finding.

A key bound to one sandbox host (``symbi keys add-host``) may sign execution events, and they count only for the
attempts the scheduler placed on that host: the scheduler passes over the others (docs/security.md). The audit
service reports each of them as well, so that an operator and an auditor see a host writing about another
host's task instead of it being only ignored: finding ``foreign_host_report``. Which host an attempt was placed
on is in the task's ``task.assigned`` events (encrypted: read from the stream with the audit service's data keys,
once per task, and kept, bounded). An event signed with the service's key is not checked: every host of a
deployment without host keys signs with it. A task whose events no longer decrypt (its agent erased) cannot be
checked and gives no finding.
"""

from __future__ import annotations

from typing import Any

from symbi_common.datakeys import DataKeys
from symbi_common.errors import SymbiError
from symbi_common.fenced_read import read_from_leader
from symbi_common.keyring import KeyRegistry
from symbi_common.reader import decode_opened
from symbi_common.sealing import OpenedEvent, open_envelope
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC
from symbi_contracts.scheduler.events import CODEC as TASK_CODEC
from symbi_contracts.scheduler.events import TaskAssigned
from symbi_tlog.rules import Finding

#: The finding's kind.
FOREIGN_HOST_REPORT = "foreign_host_report"
#: Tasks whose attempts' hosts are kept in memory (then it starts over, reading them again as needed).
TASKS_KEPT = 10_000


class HostReports:
    """Checks execution events signed by host keys against where their attempt was placed."""

    def __init__(self, nc: Any, registry: KeyRegistry, datakeys: DataKeys) -> None:
        self.nc = nc
        self.registry = registry
        self.datakeys = datakeys
        self._placed: dict[str, dict[int, str]] = {}

    async def finding(self, opened: OpenedEvent, subject: str) -> Finding | None:
        """The finding for ``opened`` if a host key signed it about an attempt placed on another host."""
        header = opened.header
        if header.aggregate_type != "execution":
            return None
        host = self.registry.host_of(header.signing_key_id)
        if host is None:
            return None
        try:
            event = (await decode_opened(opened, self.datakeys, EXECUTION_CODEC)).event
            attempt = getattr(event, "attempt", None)
            where = await self._host_of(header.aggregate_id, attempt) if isinstance(attempt, int) else None
        except SymbiError:
            return None
        if where == host:
            return None
        reason = (
            f"{header.event_type} signed by the key of sandbox host {host} ({header.signing_key_id}) about attempt "
            f"{attempt} of task {header.aggregate_id}, which was placed on {where or 'no host'}"
        )
        return Finding(kind=FOREIGN_HOST_REPORT, sequence=opened.sequence, subject=subject, reason=reason)

    async def _host_of(self, task_id: str, attempt: int) -> str | None:
        """The host ``attempt`` of the task was placed on (None: on none), from its ``task.assigned`` events; an
        attempt's host never changes, so what was read is kept, and read again only for an attempt not seen. An
        attempt a (batched, any replica's) read does not find is looked for once more as the stream's leader
        holds the task, before it counts as placed on no host."""
        known = self._placed.get(task_id)
        if known is None or attempt not in known:
            subject = f"evt.task.{task_id}"
            known = await self._placed_by(
                [m async for batch in read_subject(self.nc, EVENTS_STREAM, subject) for m in batch]
            )
            if attempt not in known:
                known = await self._placed_by(await read_from_leader(self.nc, EVENTS_STREAM, subject))
            if len(self._placed) >= TASKS_KEPT:
                self._placed.clear()
            self._placed[task_id] = known
        return known.get(attempt)

    async def _placed_by(self, messages: list[RawMessage]) -> dict[int, str]:
        """Attempt -> host of the ``task.assigned`` events among a task's stored ``messages``."""
        placed: dict[int, str] = {}
        for message in messages:
            opened = open_envelope(
                message.data, subject=message.subject, sequence=message.sequence, registry=self.registry
            )
            event = (await decode_opened(opened, self.datakeys, TASK_CODEC)).event
            if isinstance(event, TaskAssigned):
                placed[event.attempt] = event.host_id
        return placed
