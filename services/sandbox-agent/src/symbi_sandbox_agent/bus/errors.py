"""The bus's typed errors: each is answered to the agent with its code."""

from __future__ import annotations

from symbi_common.errors import SymbiError


class BusError(SymbiError):
    """Root of the bus's errors (typed, answered to the agent with their code)."""

    code = "bus_error"


class RateLimited(BusError):
    code = "rate_limited"


class BadAddress(BusError):
    code = "invalid_request"


class BadMessage(BusError):
    """A message the bus will not carry as asked: a body nested too deep, a TTL that is no duration."""

    code = "invalid_request"


class RecipientTerminated(BusError):
    code = "recipient_terminated"


class NoReply(BusError):
    code = "timeout"


class TooLarge(BusError):
    code = "too_large"


class Undecided(BusError):
    """No policy decision could be had for a delivery (the decision point timed out or is away): the message is
    handed back to the inbox for later, not refused."""

    code = "unavailable"


class BusClosed(BusError):
    """The host's bus is closed because the service is stopping: nothing more is taken from an inbox (its
    messages wait there for the agent's next run)."""

    code = "unavailable"
