"""Deciding a sandbox's data mounts: each filesystem grant of the agent's definition, checked on the disk
(:mod:`.data_roots`), is a policy decision at the enforcement point ``sandbox-agent.data_mount`` before it
becomes a bind mount — ``data.read`` on ``Data::"<root>"`` for every grant, and ``data.write`` too for a
writable one, with context ``access = "mount"`` and ``path`` (the directory under the root). Every decision
is logged by the one enforcer; the allowed ones travel in ``execution.started`` (``data_mounts``), a denied
one refuses the task with its decision. Nothing is mounted that was not decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from symbi_common.decisions import DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.policy.enforcement import SANDBOX_DATA_MOUNT
from symbi_common.policy.hooks import Enforcer, Verdict
from symbi_contracts.sandbox_agent.errors import SandboxRefused
from symbi_contracts.sandbox_agent.events import DataMountRecord

from symbi_sandbox_agent.grants import DataMount


class MountDenied(SandboxRefused):
    """The policy denied mounting a filesystem grant: the task does not run (``decision`` is the denial's)."""

    code = "policy_denied"

    def __init__(self, message: str, decision: DecisionRecord) -> None:
        super().__init__(message)
        self.decision = decision


class MountConditionNotHonoured(MountDenied):
    """The mount was allowed only with a condition a mount cannot honour (``redact``, ``log_full`` …)."""

    code = "condition_not_honoured"


class MountUndecided(Exception):
    """No decision could be had on a mount (the decision point failed): nothing starts, try again later."""


@dataclass(frozen=True, slots=True)
class DecidedMount:
    mount: DataMount
    verdicts: tuple[Verdict, ...]

    def record(self) -> DataMountRecord:
        return DataMountRecord(
            root=self.mount.root,
            path=self.mount.rel,
            target=self.mount.target,
            mode=self.mount.mode,
            decisions=tuple(v.record for v in self.verdicts),
        )


def questions(agent_id: str, mount: DataMount) -> list[DecisionRequest]:
    """What is asked for one mount: ``data.read``, and ``data.write`` for a writable one."""
    attrs = {"classification": mount.classification} if mount.classification else {}
    resource = EntityRef(type="Data", id=mount.root, attrs=attrs)
    principal = EntityRef(type="Agent", id=agent_id or "unknown")
    context = {"access": "mount", "path": mount.rel}
    actions = ["data.read"] if mount.read_only else ["data.read", "data.write"]
    return [DecisionRequest(principal=principal, action=a, resource=resource, context=context) for a in actions]


async def decide_mounts(enforcer: Enforcer, agent_id: str, mounts: Sequence[DataMount]) -> list[DecidedMount]:
    """Every mount decided (all of them allowed), or :class:`MountDenied` for the first denied one."""
    decided: list[DecidedMount] = []
    for mount in mounts:
        verdicts = await enforcer.decide_batch(questions(agent_id, mount), SANDBOX_DATA_MOUNT)
        for verdict in verdicts:
            if verdict.undecided:
                raise MountUndecided(f"{verdict.request.action} for mounting {mount.target}: {verdict.record.reason}")
            if isinstance(verdict.decision, Deny):
                unenforceable = verdict.decision.code == "unenforceable_condition"
                raise (MountConditionNotHonoured if unenforceable else MountDenied)(
                    f"policy denied mounting {mount.target} ({verdict.request.action} on "
                    f'Data::"{mount.root}", path {mount.rel or "/"!r}): {verdict.decision.reason}',
                    verdict.record,
                )
        decided.append(DecidedMount(mount, tuple(verdicts)))
    return decided
