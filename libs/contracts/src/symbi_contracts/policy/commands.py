"""The policy service's commands that other services send (``cmd.policy.<action>``, JSON bodies).

The lifecycle service answers a configuration change only once the policy service has applied the
agent's own policies: it asks ``agent_events_caught_up`` with the change's stream sequence. (Decisions,
``cmd.policy.decide``, and the decision log, ``cmd.policy.log_decisions``, travel as the types of
:mod:`symbi_common.decisions` and :mod:`symbi_common.policy`.)
"""

from __future__ import annotations

import msgspec

AGENT_EVENTS_CAUGHT_UP = "agent_events_caught_up"


class CaughtUpRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Answer once the agents' events up to stream ``sequence`` are applied to their policy sets."""

    sequence: int
    timeout_s: float = 5.0


class CaughtUp(msgspec.Struct, kw_only=True):
    #: The stream sequence of the last agent event whose policy consequences are applied.
    position: int
