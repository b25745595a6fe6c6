"""The limits of tool calls: timeout, result size cap and a per-agent, per-tool rate limit. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ToolLimits:
    #: Seconds a server has to answer a call.
    timeout_s: float = 30.0
    #: Largest result passed on to the agent (bytes of its JSON); a larger one is dropped, not truncated.
    max_result_bytes: int = 256 * 1024
    #: Largest message a server may send (a stdio line, an HTTP answer or event): a larger one is not read whole.
    max_message_bytes: int = 8 * 1024 * 1024
    #: Sustained calls per second per agent and tool, and the burst allowed above it.
    rate_per_s: float = 10.0
    burst: int = 20
    #: Seconds a server has to start (or accept the connection) and answer ``initialize`` (``[mcp]``).
    connect_timeout_s: float = 30.0
    #: Server connections open at once on the host (``[mcp] max_concurrent_connections``); one more is refused.
    max_connections: int = 100


@dataclass(slots=True)
class TokenBucket:
    """A token bucket per key; :meth:`take` answers 0 when a call may go now, else the seconds to wait."""

    rate_per_s: float
    burst: int
    _buckets: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def take(self, key: tuple[str, str], now: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_s if self.rate_per_s > 0 else float("inf")
