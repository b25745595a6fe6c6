"""How long a call waits for its answer: never less than the gateway may take for that operation.

A call's deadline is the operation's own wait — what the gateway may spend on it by design (``timeout_s`` of
``messages.request``/``receive`` and ``http.request``, a model call's bound, a tool call's) — plus
``margin_s``, which covers the decision, the performing service and the queue in front of them. Past it the
call raises :class:`~symbi_agent.errors.ChannelTimeout` and its connection is dropped (the next call opens a
new one), so a late answer is never taken for another request's. Pure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: The gateway's bound of one model call (``models.complete``), seconds (services' ``MAX_CALL_S``).
MODELS_MAX_S = 30 * 60.0
#: The longest ``timeout_s`` the gateway honours for ``messages.request`` and ``messages.receive``.
MESSAGES_MAX_WAIT_S = 60.0
#: The gateway's default and longest ``timeout_s`` of ``http.request``.
HTTP_DEFAULT_S = 30.0
HTTP_MAX_S = 120.0
#: A tool call: the server's start and ``initialize`` (30 s by default), listing, then the call (30 s by default,
#: ``tools_timeout_s`` of the host); generous, since an operator may allow longer calls.
TOOLS_MAX_S = 10 * 60.0


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The deadlines of calls. ``margin_s`` is added to each operation's own wait; ``models_s`` and ``tools_s``
    are the waits of ``models.complete`` and ``tools.call``; ``fixed_s``, when set, is every call's deadline
    instead (shorter than an operation's own wait, such a call times out although the gateway still performs
    it)."""

    margin_s: float = 60.0
    models_s: float = MODELS_MAX_S
    tools_s: float = TOOLS_MAX_S
    fixed_s: float | None = None

    def for_call(self, op: str, args: dict[str, Any]) -> float:
        """Seconds to wait for the answer to ``op`` with ``args``."""
        if self.fixed_s is not None:
            return self.fixed_s
        return self._own_wait(op, args) + self.margin_s

    def _own_wait(self, op: str, args: dict[str, Any]) -> float:
        if op in ("messages.request", "messages.receive"):
            return _clamp(args.get("timeout_s"), 10.0 if op == "messages.request" else 5.0, MESSAGES_MAX_WAIT_S)
        if op == "http.request":
            return _clamp(args.get("timeout_s"), HTTP_DEFAULT_S, HTTP_MAX_S)
        if op == "models.complete":
            return self.models_s
        if op in ("tools.call", "tools.invoke", "tools.list"):
            return self.tools_s
        return 0.0


def _clamp(value: Any, default: float, most: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default if value is None else most
    return min(max(float(value), 0.0), most)


def resolve(deadlines: Deadlines | None, timeout: float | None) -> Deadlines:
    """``deadlines`` (default :class:`Deadlines`), with ``timeout`` as every call's deadline when given."""
    chosen = deadlines or Deadlines()
    return chosen if timeout is None else dataclasses.replace(chosen, fixed_s=timeout)
