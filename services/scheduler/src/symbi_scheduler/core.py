"""The pure scheduling core: priority queues with aging, host placement strategies, preemption choice.

Nothing here does I/O or reads a clock: callers pass ``now``. One scheduling decision is
``Scheduler.decide(now)``: take the queued task with the highest *effective* priority (its level plus
one per ``aging_s`` it has waited, capped at ``high`` so only real critical work preempts), find it a host
with the configured strategy, and if a critical task fits nowhere, choose the lowest-priority running
task to stop. It costs O(levels · log n) for the queue plus O(hosts) for placement, independent of how
many tasks are queued (``bench/schedule.py`` measures it against a scan of every task on every host).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

LEVELS = 4
HIGH = 2
CRITICAL = 3

Strategy = Literal["first_fit", "best_fit", "priority"]
PreemptMode = Literal["requeue", "suspend"]


@dataclass(slots=True)
class Entry:
    """A queued task as the core sees it."""

    task_id: str
    agent_id: str
    level: int
    enqueued_at: float
    cpu: float
    memory_mb: int
    tier: str
    seq: int = 0


@dataclass(slots=True)
class Host:
    """A host's capacity and what the scheduler has placed on it."""

    host_id: str
    cpu_cores: float
    memory_mb: int
    tiers: frozenset[str]
    cpu_used: float = 0.0
    memory_used: int = 0
    #: Resources of stopped attempts whose terminal execution event has not arrived yet.
    cpu_releasing: float = 0.0
    memory_releasing: int = 0
    alive: bool = True

    @property
    def cpu_free(self) -> float:
        return self.cpu_cores - self.cpu_used

    @property
    def memory_free(self) -> int:
        return self.memory_mb - self.memory_used

    def load(self) -> float:
        """The larger of the CPU and memory fractions in use."""
        return max(self.cpu_used / self.cpu_cores if self.cpu_cores else 1.0, self.memory_used / self.memory_mb or 0.0)


@dataclass(slots=True, frozen=True)
class Running:
    """A task holding resources on a host (assigned or paused)."""

    task_id: str
    host_id: str
    level: int
    started_at: float
    cpu: float
    memory_mb: int
    paused: bool = False
    stopping: bool = False


@dataclass(slots=True, frozen=True)
class Place:
    entry: Entry
    host_id: str


@dataclass(slots=True, frozen=True)
class Preempt:
    """Stop ``victim`` (evict and requeue, or pause in place) so that ``entry`` can run on its host."""

    entry: Entry
    victim: Running
    mode: PreemptMode


Decision = Place | Preempt

#: What the caller says about a candidate task: take it, leave it queued for now, or park it (the caller
#: keeps it and pushes it back later, e.g. when its agent is busy with another task).
Verdict = Literal["take", "skip", "park"]


class AgingQueue:
    """Four FIFO levels (heaps ordered by enqueue time) merged by effective priority."""

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s
        self._heaps: list[list[tuple[float, int, str]]] = [[] for _ in range(LEVELS)]
        self.entries: dict[str, Entry] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self.entries

    def push(self, entry: Entry) -> None:
        if entry.task_id in self.entries:
            return
        self._seq += 1
        entry.seq = self._seq
        self.entries[entry.task_id] = entry
        heapq.heappush(self._heaps[entry.level], (entry.enqueued_at, entry.seq, entry.task_id))

    def remove(self, task_id: str) -> Entry | None:
        """Drop a task (lazily: its heap slot is skipped when it surfaces)."""
        return self.entries.pop(task_id, None)

    def depths(self) -> list[int]:
        out = [0] * LEVELS
        for e in self.entries.values():
            out[e.level] += 1
        return out

    def effective(self, entry: Entry, now: float) -> int:
        """The level plus one per ``aging_s`` waited, capped at ``high`` (critical only by submission)."""
        if entry.level >= HIGH or self.aging_s <= 0:
            return entry.level
        return min(HIGH, entry.level + int((now - entry.enqueued_at) / self.aging_s))

    def _head(self, level: int) -> Entry | None:
        heap = self._heaps[level]
        while heap:
            _, seq, task_id = heap[0]
            entry = self.entries.get(task_id)
            if entry is not None and entry.seq == seq:
                return entry
            heapq.heappop(heap)  # removed or re-pushed since
        return None

    def _pop_best(self, now: float) -> Entry | None:
        best: Entry | None = None
        best_key: tuple[int, float] = (-1, 0.0)
        for level in range(LEVELS - 1, -1, -1):
            head = self._head(level)
            if head is None:
                continue
            key = (self.effective(head, now), -head.enqueued_at)
            if key > best_key:
                best, best_key = head, key
        if best is not None:
            heapq.heappop(self._heaps[best.level])
            del self.entries[best.task_id]
        return best

    def ordered(self, now: float, verdict: Callable[[Entry], Verdict], max_skips: int) -> Entry | None:
        """The first task, in effective-priority order, that ``verdict`` takes (removed from the queue).

        Skipped tasks stay queued in their places; parked ones are removed (the caller holds them).
        At most ``max_skips`` tasks are looked at past the first, which bounds a decision's cost.
        """
        skipped: list[Entry] = []
        try:
            while len(skipped) <= max_skips:
                entry = self._pop_best(now)
                if entry is None:
                    return None
                v = verdict(entry)
                if v == "take":
                    return entry
                if v == "skip":
                    skipped.append(entry)
            return None
        finally:
            for entry in skipped:
                self.entries[entry.task_id] = entry
                heapq.heappush(self._heaps[entry.level], (entry.enqueued_at, entry.seq, entry.task_id))


class Placer:
    """Chooses a host for a task with one of three strategies.

    - ``first_fit``: the first host (in host-id order) with room: cheapest decision.
    - ``best_fit``: the host left with the least room: best utilisation.
    - ``priority``: non-critical work may use only ``1 - reserve`` of each host, so critical work finds
      headroom; among the hosts with room, the least loaded (load balancing).
    """

    def __init__(self, strategy: Strategy, reserve: float = 0.2) -> None:
        self.strategy = strategy
        self.reserve = reserve
        self.hosts: dict[str, Host] = {}
        self._order: list[Host] = []

    def set_hosts(self, hosts: Iterable[Host]) -> None:
        self.hosts = {h.host_id: h for h in hosts}
        self._reorder()

    def upsert(self, host: Host) -> None:
        self.hosts[host.host_id] = host
        self._reorder()

    def drop(self, host_id: str) -> None:
        if self.hosts.pop(host_id, None) is not None:
            self._reorder()

    def _reorder(self) -> None:
        self._order = sorted(self.hosts.values(), key=lambda h: h.host_id)

    def choose(self, cpu: float, memory_mb: int, tier: str, critical: bool) -> Host | None:
        """A host for the request, or None if none has room."""
        if self.strategy == "first_fit":
            for h in self._order:
                if h.alive and tier in h.tiers and h.cpu_free >= cpu and h.memory_free >= memory_mb:
                    return h
            return None
        if self.strategy == "best_fit":
            best: Host | None = None
            best_left = 0.0
            for h in self._order:
                cpu_free, mem_free = h.cpu_free, h.memory_free
                if h.alive and tier in h.tiers and cpu_free >= cpu and mem_free >= memory_mb:
                    left = (cpu_free - cpu) / h.cpu_cores + (mem_free - memory_mb) / h.memory_mb
                    if best is None or left < best_left:
                        best, best_left = h, left
            return best
        keep = 0.0 if critical else self.reserve
        chosen: Host | None = None
        chosen_load = 0.0
        for h in self._order:
            if not (h.alive and tier in h.tiers):
                continue
            if h.cpu_used + cpu > h.cpu_cores * (1 - keep) or h.memory_used + memory_mb > h.memory_mb * (1 - keep):
                continue
            load = h.load()
            if chosen is None or load < chosen_load:
                chosen, chosen_load = h, load
        return chosen


def choose_victim(
    entry: Entry, hosts: dict[str, Host], running: Iterable[Running], mode: PreemptMode
) -> Running | Literal["wait"] | None:
    """The running task to stop for critical ``entry``: the lowest priority, then the most recently started,
    among those whose stop alone makes room on a host of the right tier. ``"wait"`` if a stop already under
    way will make room; None if nothing can."""
    for host in hosts.values():
        if (
            host.alive
            and entry.tier in host.tiers
            and (host.cpu_releasing or host.memory_releasing)
            and host.cpu_free + host.cpu_releasing >= entry.cpu
            and host.memory_free + host.memory_releasing >= entry.memory_mb
        ):
            return "wait"
    best: Running | None = None
    best_key: tuple[int, float] = (0, 0.0)
    for r in running:
        if r.level >= CRITICAL or r.paused or r.stopping:
            continue
        h = hosts.get(r.host_id)
        if h is None or not h.alive or entry.tier not in h.tiers:
            continue
        freed_memory = r.memory_mb if mode == "requeue" else 0
        if h.cpu_free + r.cpu < entry.cpu or h.memory_free + freed_memory < entry.memory_mb:
            continue
        key = (r.level, -r.started_at)
        if best is None or key < best_key:
            best, best_key = r, key
    return best


def never_fits(cpu: float, memory_mb: int, tier: str, hosts: Iterable[Host]) -> str | None:
    """Why no live host of the tier could ever run this, even empty (None: one could, or none is known yet,
    so the task waits for hosts to join)."""
    offering = [h for h in hosts if h.alive and tier in h.tiers]
    if not offering:
        return None
    if any(h.cpu_cores >= cpu and h.memory_mb >= memory_mb for h in offering):
        return None
    most_memory = max(h.memory_mb for h in offering)
    most_cpu = max(h.cpu_cores for h in offering)
    return (
        f"asks for {cpu:g} CPU cores and {memory_mb} MB of memory; the largest {tier} host has "
        f"{most_cpu:g} cores and {most_memory} MB"
    )


@dataclass(slots=True)
class Scheduler:
    """Queue + placer + the running set: one ``decide`` call is one scheduling decision."""

    placer: Placer
    queue: AgingQueue
    preemption: PreemptMode = "requeue"
    max_skips: int = 32
    running: dict[str, Running] = field(default_factory=dict)
    #: Tasks (each one agent's) that may run at once in the whole runtime (``runtime.max_concurrent_agents``).
    max_running: int = 10_000

    def decide(self, now: float, agent_free: Callable[[Entry], Verdict] | None = None) -> Decision | None:
        """The next decision, or None if nothing queued can run now.

        A task whose agent is busy is parked by ``agent_free`` (returns ``"park"``); a task that fits
        nowhere is skipped for this decision unless it is critical and a preemption makes room. Nothing
        starts while ``max_running`` tasks run.
        """
        if len(self.running) >= self.max_running:
            return None
        preempt: list[Preempt] = []
        # Requests that found no host in this decision: a candidate asking for at least as much (same tier,
        # same class) cannot fit either, so it is skipped without another scan of the hosts.
        no_room: list[tuple[float, int, str, bool]] = []

        def verdict(entry: Entry) -> Verdict:
            if agent_free is not None:
                v = agent_free(entry)
                if v != "take":
                    return v
            critical = entry.level >= CRITICAL
            hopeless = any(
                entry.cpu >= cpu and entry.memory_mb >= mem and entry.tier == tier and critical == crit
                for cpu, mem, tier, crit in no_room
            )
            if not hopeless:
                if self.placer.choose(entry.cpu, entry.memory_mb, entry.tier, critical) is not None:
                    return "take"
                no_room.append((entry.cpu, entry.memory_mb, entry.tier, critical))
            if critical and not preempt:
                victim = choose_victim(entry, self.placer.hosts, self.running.values(), self.preemption)
                if isinstance(victim, Running):
                    preempt.append(Preempt(entry, victim, self.preemption))
            return "skip"

        taken = self.queue.ordered(now, verdict, self.max_skips)
        if taken is not None:
            host = self.placer.choose(taken.cpu, taken.memory_mb, taken.tier, taken.level >= CRITICAL)
            assert host is not None
            return Place(taken, host.host_id)
        return preempt[0] if preempt else None


def brute_force_decide(entries: Iterable[Entry], hosts: Iterable[Host], now: float, aging_s: float) -> Place | None:
    """The baseline the benchmark compares with: scan every queued task against every host."""
    host_list = list(hosts)
    best: tuple[tuple[int, float], Entry, Host] | None = None
    for e in entries:
        eff = e.level if e.level >= HIGH else min(HIGH, e.level + int((now - e.enqueued_at) / aging_s))
        key = (eff, -e.enqueued_at)
        for h in host_list:
            if h.alive and e.tier in h.tiers and h.cpu_free >= e.cpu and h.memory_free >= e.memory_mb:
                if best is None or key > best[0]:
                    best = (key, e, h)
                break
    return Place(best[1], best[2].host_id) if best is not None else None
