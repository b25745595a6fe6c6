"""A token bucket: the network IO limit of one agent's sandbox, shared by all its connections. Pure.

Tokens are bytes; the rate is the definition's ``network_io_mbps`` (MB/s, 10^6 bytes), the burst a tenth
of a second's worth (at least 64 KiB), so a transfer's average stays within a few percent of the rate.
The caller passes the clock, so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MB = 1_000_000
MIN_BURST = 64 * 1024


@dataclass(slots=True)
class TokenBucket:
    rate: float  # bytes per second
    burst: float
    tokens: float = field(init=False)
    updated: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst <= 0:
            raise ValueError("a token bucket needs a rate and a burst above 0")
        self.tokens = self.burst
        self.updated = -1.0

    @classmethod
    def for_mbps(cls, mbps: float) -> TokenBucket:
        rate = mbps * MB
        return cls(rate=rate, burst=max(rate / 10, MIN_BURST))

    def _refill(self, now: float) -> None:
        if self.updated < 0:
            self.updated = now
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now

    def take(self, n: int, now: float) -> float:
        """Take ``n`` bytes' tokens (going into debt if needed); the seconds to wait before sending them."""
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def grant(self, want: int, now: float) -> int:
        """How many of ``want`` bytes may go now without debt (at least 1 when any token is there, else 0)."""
        self._refill(now)
        return max(0, min(want, int(self.tokens)))
