"""Per-agent send limits: token buckets for messages/s and bytes/s (pure; the clock is passed in)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SendLimits:
    """Sustained rates an agent may send at; a burst of one second's worth is allowed."""

    messages_per_s: float = 1000.0
    bytes_per_s: float = 8 * 1024 * 1024


@dataclass(slots=True)
class _Bucket:
    rate: float
    level: float
    at: float

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` can be taken (0: taken now)."""
        self.level = min(self.rate, self.level + (now - self.at) * self.rate)
        self.at = now
        if amount <= self.level:
            return 0.0
        return (amount - self.level) / self.rate if self.rate > 0 else float("inf")


@dataclass(slots=True)
class RateLimiter:
    """The buckets of every sending agent of this host."""

    limits: SendLimits
    _buckets: dict[str, tuple[_Bucket, _Bucket]] = field(default_factory=dict)

    def take(self, agent_id: str, size: int, now: float) -> float:
        """Take one message of ``size`` bytes for ``agent_id``; returns 0, or the seconds to wait (nothing taken)."""
        buckets = self._buckets.get(agent_id)
        if buckets is None:
            rate, volume = self.limits.messages_per_s, self.limits.bytes_per_s
            buckets = (_Bucket(rate, rate, now), _Bucket(volume, volume, now))
            self._buckets[agent_id] = buckets
        count, volume_bucket = buckets
        wait = max(count.wait_for(1.0, now), volume_bucket.wait_for(float(size), now))
        if wait == 0.0:
            count.level -= 1.0
            volume_bucket.level -= size
        return wait
