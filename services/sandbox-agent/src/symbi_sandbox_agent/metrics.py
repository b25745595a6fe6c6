"""The sandbox-agent's Prometheus metrics (served on ``/metrics`` with every other ``symbi_*`` metric)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNNING = Gauge("symbi_sandbox_running_containers", "Sandbox containers running now", ["tier"])
EXECUTIONS = Counter(
    "symbi_sandbox_executions_total",
    "Executions ended, by outcome (exited, oom_killed, timed_out, killed, refused, failed) and tier",
    ["outcome", "tier"],
)
CPU_SECONDS = Histogram(
    "symbi_sandbox_container_cpu_seconds",
    "CPU time one sandbox used, measured from its cgroup",
    ["tier"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
PEAK_MEMORY = Histogram(
    "symbi_sandbox_container_peak_memory_bytes",
    "Peak memory of one sandbox, measured from its cgroup",
    ["tier"],
    buckets=tuple(float(2**n) for n in range(20, 35)),  # 1 MiB .. 16 GiB
)
ACTIONS = Counter(
    "symbi_sandbox_actions_total",
    "Action gateway decisions, by action and outcome (allowed, denied, failed)",
    ["action", "outcome"],
)
