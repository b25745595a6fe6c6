"""The two decision points behind ``[policy] enforcement``: embedded (in-process) and remote (over NATS).

Both answer from the same engine semantics against the same policy version — the embedded one from its
own :class:`PolicyFollower`, the remote one from the policy service's — so for one version they give
identical decisions. The embedded point costs no network hop (tens of microseconds per decision); the
remote one keeps Cedar out of the calling process.
"""

from __future__ import annotations

import msgspec

from symbi_common.commands import CommandClient
from symbi_common.decisions import Decision, DecisionRequest, Deny
from symbi_common.errors import InfrastructureError
from symbi_common.policy.decision_log import DecisionLog
from symbi_common.policy.follower import PolicyFollower
from symbi_common.policy.observed import observed, observed_batch


class EmbeddedDecisionPoint:
    """Decides in-process against the policy sets a :class:`PolicyFollower` keeps current."""

    def __init__(self, follower: PolicyFollower, log: DecisionLog | None = None) -> None:
        self.follower = follower
        self.log = log

    @property
    def version(self) -> int:
        return self.follower.engine.version

    async def decide(self, request: DecisionRequest) -> Decision:
        with observed("embedded", request) as out:
            out.append(self.follower.engine.decide(request))
        return out[0]

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        with observed_batch("embedded", requests) as out:
            out.extend(self.follower.engine.decide_batch(requests))
        return out

    async def close(self) -> None:
        if self.log is not None:
            await self.log.close()
        await self.follower.stop()


class DecisionBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The body of ``cmd.policy.decide_batch``."""

    requests: list[DecisionRequest]


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    decisions: list[Decision]
    policy_version: int


class RemoteDecisionPoint:
    """Asks the policy service (``cmd.policy.decide`` / ``cmd.policy.decide_batch``)."""

    def __init__(self, client: CommandClient, log: DecisionLog | None = None, *, timeout: float | None = None) -> None:
        self.client = client
        self.log = log
        self.timeout = timeout
        self._version = 0
        #: False after a call the policy service did not answer, until one it answers.
        self.reachable = True
        #: True while the policy service answers that a policy set is halted (it denies everything).
        self.halted = False

    @property
    def healthy(self) -> bool:
        """The policy service answered the last call, and not with a halted policy (the health check)."""
        return self.reachable and not self.halted

    def _answered(self, decisions: list[Decision]) -> None:
        self.reachable = True
        self.halted = any(isinstance(d, Deny) and d.code == "policy_halted" for d in decisions)

    @property
    def version(self) -> int:
        """The policy version of the last answer received."""
        return self._version

    async def decide(self, request: DecisionRequest) -> Decision:
        with observed("remote", request) as out:
            try:
                decision: Decision = await self.client.call(
                    "policy",
                    "decide",
                    request,
                    Decision,  # type: ignore[arg-type]
                    timeout=self.timeout,
                )
            except InfrastructureError:
                self.reachable = False
                raise
            out.append(decision)
        self._answered([decision])
        self._version = decision.policy_version
        return decision

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        if not requests:
            return []
        with observed_batch("remote", requests) as out:
            try:
                result = await self.client.call(
                    "policy", "decide_batch", DecisionBatch(requests=requests), BatchResult, timeout=self.timeout
                )
            except InfrastructureError:
                self.reachable = False
                raise
            out.extend(result.decisions)
        self._answered(result.decisions)
        self._version = result.policy_version
        return result.decisions

    async def close(self) -> None:
        if self.log is not None:
            await self.log.close()
