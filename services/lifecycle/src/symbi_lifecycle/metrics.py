"""The lifecycle service's metrics: agents by state (read from the registry at each scrape) and how
initializations end."""

from __future__ import annotations

import asyncpg
from prometheus_client import Counter, Gauge
from symbi_contracts.lifecycle.events import AgentStatus

AGENTS = Gauge("symbi_agents", "Registered agents by state (from the registry read model)", ["state"])
INITIALIZATIONS = Counter(
    "symbi_agent_initializations_total",
    "Agents taken out of Initializing, by outcome (ready, failed, denied)",
    ["outcome"],
)


async def refresh_agents(pool: asyncpg.Pool) -> None:
    """Set :data:`AGENTS` from the read model; every state is reported, 0 when no agent is in it."""
    rows = await pool.fetch("SELECT state, count(*) AS n FROM lifecycle.agents GROUP BY state")
    counts = {row["state"]: int(row["n"]) for row in rows}
    for status in AgentStatus:
        AGENTS.labels(status.value).set(counts.get(status.value, 0))
