"""Decisions of the bus's sends, remembered per policy version.

A message between two agents asks the same question many times (same sender, recipient, classification,
size). Against one policy version Cedar's answer to the same request is always the same (the embedded
engine is a pure function of the policy sets of that version and the request, whose entities travel in it),
so the bus remembers answers per engine: the engine object is replaced on every policy change, and its
remembered answers go with it. Only the embedded decision point is remembered; a remote one is asked every
time (its version is known only after it answered). Every decision still goes through the one enforcer,
which checks the enforcement point's conditions and records and logs each decision under its own id.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

import msgspec
from symbi_common.decisions import Decision, DecisionRequest, Deny
from symbi_common.policy.hooks import UNDECIDED
from symbi_common.policy.points import EmbeddedDecisionPoint

#: Answers remembered per engine at most (the oldest go first).
MAX_REMEMBERED = 4096
_encoder = msgspec.json.Encoder()
NOT_REMEMBERED = frozenset({*UNDECIDED, "policy_halted"})


class RememberedDecisions:
    """A decision point in front of ``point`` that remembers the embedded engine's answers per version."""

    def __init__(self, point: Any) -> None:
        self.point = point
        self.log = getattr(point, "log", None)
        self._engine: Any = None
        self._answers: OrderedDict[bytes, Decision] = OrderedDict()
        self.hits = 0

    @property
    def version(self) -> int:
        return int(self.point.version)

    async def decide(self, request: DecisionRequest) -> Decision:
        # A remote point, or a policy set halted (the follower halts it in place, before the engine is
        # replaced): asked every time, so a remembered allow never outlives a halt.
        if not isinstance(self.point, EmbeddedDecisionPoint) or self.point.follower.halted:
            decision: Decision = await self.point.decide(request)
            return decision
        engine = self.point.follower.engine
        if engine is not self._engine:  # a new policy version: nothing remembered holds
            self._engine, self._answers = engine, OrderedDict()
        key = _encoder.encode(request)
        found = self._answers.get(key)
        if found is not None:
            self.hits += 1
            return found
        decision = await self.point.decide(request)
        if not (isinstance(decision, Deny) and decision.code in NOT_REMEMBERED):  # failures to decide are not
            self._answers[key] = decision
            if len(self._answers) > MAX_REMEMBERED:
                self._answers.popitem(last=False)
        return decision

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return [await self.decide(r) for r in requests]

    async def close(self) -> None:
        await self.point.close()


_remembered: weakref.WeakKeyDictionary[Any, RememberedDecisions] = weakref.WeakKeyDictionary()


def remembered(point: Any) -> RememberedDecisions:
    """The remembering front of ``point`` (one per decision point)."""
    found = _remembered.get(point)
    if found is None:
        found = _remembered[point] = RememberedDecisions(point)
    return found
