"""The sandbox hosts as the scheduler counts them: their heartbeats, and what the tasks' attempts hold on each
(no I/O).

A host's capacity comes from its ``HOSTS`` heartbeat; its usage is counted from the holds of the attempts
placed on it (a paused attempt keeps its memory and gives up its CPU; a stopped one is *releasing* until
its terminal execution event). The core's :class:`~symbi_scheduler.core.Host` objects carry both, so a
placement decision reads them directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from symbi_scheduler.core import Host, Placer
from symbi_scheduler.records import Hold, HostInfo, TaskRec


class Capacity:
    """Hosts, their heartbeats, and the tasks holding resources on each."""

    def __init__(self, placer: Placer, host_lost_after_s: float) -> None:
        self.placer = placer
        self.host_lost_after_s = host_lost_after_s
        self.host_info: dict[str, HostInfo] = {}
        #: Until this time a host we have no heartbeat from yet is not declared lost (start-up grace).
        self.grace_until = 0.0
        #: host id -> the tasks holding resources there
        self._by_host: dict[str, dict[str, TaskRec]] = {}
        #: task id -> the hosts it holds resources on (the same index the other way round)
        self._hosts_of: dict[str, set[str]] = {}

    def seen(self, info: HostInfo, now: float) -> bool:
        """A heartbeat from the ``HOSTS`` bucket; whether it changes what placement sees.

        It does when the host is new, its capacity or tiers changed, or it was not counted alive (lost,
        deleted, or never heard from); an unchanged heartbeat of a live host only keeps it alive."""
        previous = self.host_info.get(info.host_id)
        self.host_info[info.host_id] = info
        host = self.placer.hosts.get(info.host_id)
        tiers = frozenset(info.tiers)
        if host is None:
            host = Host(info.host_id, info.cpu_cores, info.memory_mb, tiers)
            self.placer.upsert(host)
            self._recount(host)
            return True
        changed = (host.cpu_cores, host.memory_mb, host.tiers) != (info.cpu_cores, info.memory_mb, tiers)
        host.cpu_cores, host.memory_mb, host.tiers = info.cpu_cores, info.memory_mb, tiers
        was_alive = host.alive and previous is not None and now - previous.heartbeat_s() <= self.host_lost_after_s
        return changed or not was_alive

    def gone(self, host_id: str) -> None:
        """The host's key was deleted: it is treated as lost at once."""
        info = self.host_info.get(host_id)
        if info is not None:
            self.host_info[host_id] = msgspec.structs.replace(info, heartbeat_at=0.0)

    def check(self, now: float) -> None:
        """Mark hosts alive or lost by the age of their heartbeat."""
        for host_id, host in self.placer.hosts.items():
            info = self.host_info.get(host_id)
            if info is None:
                host.alive = now < self.grace_until
            else:
                host.alive = now - info.heartbeat_s() <= self.host_lost_after_s

    def holding(self, host_id: str) -> Iterator[tuple[TaskRec, int, Hold]]:
        """Each (task, attempt, hold) on ``host_id``."""
        for rec in self._by_host.get(host_id, {}).values():
            for attempt, hold in rec.holds.items():
                if hold.host_id == host_id:
                    yield rec, attempt, hold

    def holds_on(self, host_id: str) -> list[str]:
        """The tasks holding resources on ``host_id``."""
        return sorted(self._by_host.get(host_id, ()))

    def recount_for(self, rec: TaskRec) -> None:
        """Re-count the hosts ``rec`` holds (or held) resources on, after its holds changed — also a host it no
        longer holds anything on although it has moved on to another (a stopped attempt's end reported late)."""
        holding = {h.host_id for h in rec.holds.values()}
        held = self._hosts_of.pop(rec.task_id, set())
        for host_id in holding | held | ({rec.host_id} if rec.host_id else set()):
            index = self._by_host.setdefault(host_id, {})
            if host_id in holding:
                index[rec.task_id] = rec
            else:
                index.pop(rec.task_id, None)
            self._recount(self._host(host_id))
        if holding:
            self._hosts_of[rec.task_id] = holding

    def _host(self, host_id: str) -> Host:
        host = self.placer.hosts.get(host_id)
        if host is None:  # placed before we saw a heartbeat (replay): it counts as lost until one arrives
            host = Host(host_id, 0.0, 0, frozenset())
            self.placer.upsert(host)
        return host

    def _recount(self, host: Host) -> None:
        cpu = cpu_rel = 0.0
        mem = mem_rel = 0
        for _, _, hold in self.holding(host.host_id):
            mem += hold.memory_mb
            if not hold.paused:
                cpu += hold.cpu
            if hold.stopping:
                cpu_rel += hold.cpu
                mem_rel += hold.memory_mb
        host.cpu_used, host.memory_used, host.cpu_releasing, host.memory_releasing = cpu, mem, cpu_rel, mem_rel
