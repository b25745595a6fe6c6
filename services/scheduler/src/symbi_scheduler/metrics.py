"""The scheduler's metrics on ``/metrics`` (``symbi_scheduler_*``).

Counters and histograms count what this replica appended, at the moment the conditional append
succeeded: a task's end is appended exactly once (a repeated append is refused), so across leader
changes and restarts every task is counted once, by the replica that ended it; sum over replicas.
Gauges (queue depths, running and paused tasks, hosts) are read from the replica's model when
``/metrics`` is scraped, so they are right after a restart as soon as the replica has caught up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from symbi_contracts.scheduler.events import TaskAssigned, TaskCancelled, TaskCompleted, TaskEvent, TaskSuspended

from symbi_scheduler.domain import TaskStatus

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

TASKS = Counter("symbi_scheduler_tasks_total", "Tasks that ended, by outcome (cancelled included)", ["outcome"])
ALLOCATE_DENIALS = Counter(
    "symbi_scheduler_allocate_denials_total", "task.allocate decisions that denied a task its placement"
)
ACTION_DENIALS = Counter(
    "symbi_scheduler_action_denials_total", "Running tasks paused because the policy denied a request of the workload"
)
ASSIGN_SECONDS = Histogram(
    "symbi_scheduler_submit_to_assign_seconds",
    "Time from a task's submission to its first assignment to a host",
    buckets=_LATENCY_BUCKETS,
)
COMPLETE_SECONDS = Histogram(
    "symbi_scheduler_submit_to_complete_seconds",
    "Time from a task's submission to its completion (task.completed)",
    buckets=_LATENCY_BUCKETS,
)


def recorded(event: TaskEvent, submitted_at: float, at: float) -> None:
    """Count one task event this replica appended (``submitted_at``/``at``: Unix seconds of both events)."""
    if isinstance(event, TaskCompleted):
        TASKS.labels(event.outcome).inc()
        COMPLETE_SECONDS.observe(max(0.0, at - submitted_at))
    elif isinstance(event, TaskCancelled):
        TASKS.labels("cancelled").inc()
    elif isinstance(event, TaskAssigned):
        if event.attempt == 1:
            ASSIGN_SECONDS.observe(max(0.0, at - submitted_at))
    elif isinstance(event, TaskSuspended):
        if event.reason == "policy_denied":
            ALLOCATE_DENIALS.inc()
        elif event.reason == "action_denied":
            ACTION_DENIALS.inc()


class _Replica(Protocol):
    """What the gauges read (a :class:`symbi_scheduler.application.SchedulerService`)."""

    model: Any
    leader: Any


class SchedulerGauges(Collector):
    """Gauges computed from the model of the replica this process runs (the latest one attached)."""

    def __init__(self) -> None:
        self._replicas: list[_Replica] = []

    def attach(self, replica: _Replica) -> None:
        self._replicas.append(replica)

    def detach(self, replica: _Replica) -> None:
        if replica in self._replicas:
            self._replicas.remove(replica)

    def collect(self) -> Iterator[Metric]:
        if not self._replicas:
            return
        replica = self._replicas[-1]
        model = replica.model
        depth = GaugeMetricFamily(
            "symbi_scheduler_queue_depth", "Tasks waiting to be placed, by priority", labels=["priority"]
        )
        counts, by_status = model.counts()
        running, paused, denied = (by_status[s] for s in (TaskStatus.ASSIGNED, TaskStatus.PAUSED, TaskStatus.DENIED))
        for priority, n in counts.items():
            depth.add_metric([priority], n)
        yield depth
        yield GaugeMetricFamily("symbi_scheduler_running_tasks", "Tasks placed on a host and not paused", running)
        yield GaugeMetricFamily("symbi_scheduler_paused_tasks", "Tasks paused in place on their host", paused)
        yield GaugeMetricFamily(
            "symbi_scheduler_denied_tasks", "Tasks denied placement, waiting for their agent to be resumed", denied
        )
        model.check_hosts(time.time())
        hosts = list(model.placer.hosts.values())
        yield GaugeMetricFamily("symbi_scheduler_hosts_known", "Sandbox hosts the scheduler has seen", len(hosts))
        yield GaugeMetricFamily(
            "symbi_scheduler_hosts_live", "Sandbox hosts with a fresh heartbeat", sum(1 for h in hosts if h.alive)
        )
        yield GaugeMetricFamily(
            "symbi_scheduler_leader", "1 while this replica holds the scheduling lease", int(replica.leader.leading)
        )


#: The process's gauges; registered once (a process runs one replica; tests may start several in turn).
GAUGES = SchedulerGauges()
REGISTRY.register(GAUGES)
