"""Who may write and read what: the subjects each service's signing key may write, the services entitled to
decrypt each aggregate type's payloads, and NATS subject matching.

The key registry (:mod:`symbi_common.keyring`) binds each service's key to the subjects named here.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Which subjects each service's signing key may write. Exactly one service writes each aggregate type.
SERVICE_SUBJECTS: Mapping[str, tuple[str, ...]] = {
    "lifecycle": ("evt.agent.>",),
    "scheduler": ("evt.task.>", "evt.schedule.>"),
    "policy": ("evt.policy.>",),
    "audit": ("evt.audit.>",),
    "sandbox-agent": ("evt.execution.>", "evt.host.>", "evt.toolserver.>", "evt.budget.>"),
    "context": ("evt.memory.>", "evt.knowledge.>"),
}

_ALL = tuple(SERVICE_SUBJECTS)

#: Which services may decrypt the payloads of each aggregate type (the writer first). Derived from
#: what each service reads: its own aggregates; the embedded policy decision point in every service
#: reads policy sets; the scheduler follows agents and executions; the policy service follows
#: agents; the sandbox agent loads its tasks; the context index follows tasks; the audit service
#: reads the ``agent_id`` of every event and shows event details to auditors.
AGGREGATE_READERS: Mapping[str, tuple[str, ...]] = {
    "agent": ("lifecycle", "scheduler", "policy", "audit"),
    "task": ("scheduler", "sandbox-agent", "context", "audit"),
    "schedule": ("scheduler", "audit"),
    "policy": ("policy", *(s for s in _ALL if s != "policy")),
    "audit": ("audit",),
    "execution": ("sandbox-agent", "scheduler", "audit"),
    "host": ("sandbox-agent", "audit"),
    "toolserver": ("sandbox-agent", "audit"),
    "budget": ("sandbox-agent", "audit"),
    "memory": ("context", "audit"),
    "knowledge": ("context", "audit"),
}


def writer_of(aggregate_type: str) -> str | None:
    """The one service whose key may write ``evt.<aggregate_type>.…``."""
    subject = f"evt.{aggregate_type}.x"
    for service, patterns in SERVICE_SUBJECTS.items():
        if any(subject_matches(p, subject) for p in patterns):
            return service
    return None


def readers_of(aggregate_type: str) -> tuple[str, ...]:
    """The services entitled to decrypt ``aggregate_type`` payloads: the table, else writer + audit."""
    readers = AGGREGATE_READERS.get(aggregate_type)
    if readers is not None:
        return readers
    writer = writer_of(aggregate_type)
    return tuple(dict.fromkeys(s for s in (writer, "audit") if s is not None))


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a trailing ``>`` one or more."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, tok in enumerate(p_tokens):
        if tok == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens) or (tok != "*" and tok != s_tokens[i]):
            return False
    return len(s_tokens) == len(p_tokens)
