"""Per-agent send limits: token buckets for messages/s and bytes/s, the largest body, the inbox depth (pure;
the clock is passed in).

An agent's limits are the tightest of its host's settings, its definition's ``messaging`` block and the
``@cap_resources`` of the policy that allowed the message (:meth:`SendLimits.lowered`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from symbi_common.bus_names import INBOX_DEPTH
from symbi_contracts.agent_protocol import MAX_REQUEST_BYTES
from symbi_contracts.lifecycle.config import Messaging


@dataclass(frozen=True, slots=True)
class SendLimits:
    """Sustained rates an agent may send at (a burst of one second's worth is allowed), its largest message
    body, and how many messages its own inbox holds."""

    messages_per_s: float = 1000.0
    bytes_per_s: float = 8 * 1024 * 1024
    max_message_bytes: int = MAX_REQUEST_BYTES
    queue_depth: int = INBOX_DEPTH

    def lowered(self, definition: Messaging | None, caps: Mapping[str, float] | None = None) -> SendLimits:
        """These (the host's) limits, lowered to the definition's and to a policy's caps: never raised."""
        out = self
        if definition is not None:
            out = replace(
                out,
                messages_per_s=min(out.messages_per_s, definition.messages_per_s),
                bytes_per_s=min(out.bytes_per_s, definition.bytes_per_s),
                max_message_bytes=min(out.max_message_bytes, definition.max_message_bytes),
                queue_depth=min(out.queue_depth, definition.queue_depth),
            )
        caps = caps or {}
        return replace(
            out,
            messages_per_s=min(out.messages_per_s, float(caps.get("messages_per_s", out.messages_per_s))),
            bytes_per_s=min(out.bytes_per_s, float(caps.get("bytes_per_s", out.bytes_per_s))),
            max_message_bytes=min(out.max_message_bytes, int(caps.get("max_message_bytes", out.max_message_bytes))),
        )


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

    def at_rate(self, rate: float) -> _Bucket:
        """This bucket filling at ``rate`` from now on, as full (the same share of its burst) as it was. Kept
        as a share, not clamped: else each switch from a high rate back to a capped one would hand out a full
        token, and alternating recipients would send to the capped one at nearly the high rate."""
        if rate != self.rate:
            self.level = self.level * rate / self.rate if self.rate > 0 else 0.0
            self.rate = rate
        return self


@dataclass(slots=True)
class RateLimiter:
    """The buckets of every sending agent of this host (``limits``: the host's defaults)."""

    limits: SendLimits
    _buckets: dict[str, tuple[_Bucket, _Bucket]] = field(default_factory=dict)

    def take(self, agent_id: str, size: int, now: float, limits: SendLimits | None = None) -> float:
        """Take one message of ``size`` bytes for ``agent_id`` under ``limits`` (default: the host's); returns
        0, or the seconds to wait (nothing taken)."""
        lim = limits or self.limits
        rate, volume = lim.messages_per_s, lim.bytes_per_s
        buckets = self._buckets.get(agent_id)
        if buckets is None:
            buckets = (_Bucket(rate, rate, now), _Bucket(volume, volume, now))
            self._buckets[agent_id] = buckets
        count, volume_bucket = buckets[0].at_rate(rate), buckets[1].at_rate(volume)
        wait = max(count.wait_for(1.0, now), volume_bucket.wait_for(float(size), now))
        if wait == 0.0:
            count.level -= 1.0
            volume_bucket.level -= size
        return wait
