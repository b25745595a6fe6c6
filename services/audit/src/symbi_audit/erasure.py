"""GDPR erasure by crypto-shredding, recorded as audit events on ``evt.audit.<erasure id>``.

An erasure appends ``audit.erasure_requested``, destroys every generation of the aggregate's data key
(``DataKeys.destroy``) and appends ``audit.erasure_executed``. Erasing an agent (``agent.<id>``) also destroys
the key its tasks and their executions are sealed with (:mod:`symbi_common.key_names`), and that of its own policy
set ``policy.agent-<id>`` (its text, from the agent's definition, may name personal data; every decision point
then reads the set as forbidding the agent every action: :mod:`symbi_common.policy.follower`); a task or execution
has no key of its own to erase (unless written before tasks were sealed per agent). The aggregate's payloads can no
longer be decrypted by anyone, while its signed, hash-chained envelopes and the Merkle tree still
verify (verification never needs a data key). An aggregate has one erasure (its id is derived from the
aggregate's name): if the process dies between the two steps, the request is on record without its execution,
which the GDPR report shows as pending until the request is made again and continues it.
"""

from __future__ import annotations

import re
import uuid

import msgspec
from symbi_common.datakeys import DataKeys
from symbi_common.errors import ValidationError
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.key_names import AGENT_KEYED_TYPES, agent_data_key
from symbi_common.policy.agent_sets import agent_set_id
from symbi_common.policy.events import AGGREGATE_TYPE as POLICY_AGGREGATE
from symbi_common.sealing import NEW_AGGREGATE
from symbi_contracts.lifecycle.events import AGGREGATE_TYPE as AGENT_AGGREGATE
from symbi_contracts.secrets.events import SecretChanged

AGGREGATE_TYPE = "audit"
_AGGREGATE_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\Z")  # dot-separated tokens, none empty


class ErasureRequested(Event, frozen=True, tag="audit.erasure_requested"):
    aggregate: str
    """``<type>.<id>`` of the aggregate whose data key is destroyed."""
    requested_by: str
    reason: str


class ErasureExecuted(Event, frozen=True, tag="audit.erasure_executed"):
    aggregate: str
    data_key: str
    #: Every data key destroyed (``<name>/*``): the aggregate's, and for an agent those of its tasks and
    #: executions and of its own policy set. Events written before it existed have none (``data_key`` alone
    #: was destroyed).
    data_keys: tuple[str, ...] = ()


#: The audit aggregate's events: erasures, and each change of the secrets store (:mod:`symbi_audit.secret_changes`).
AuditEvent = ErasureRequested | ErasureExecuted | SecretChanged
CODEC: EventCodec[AuditEvent] = EventCodec([ErasureRequested, ErasureExecuted, SecretChanged])


class EraseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Crypto-shred ``aggregate`` (``<type>.<id>``, e.g. ``agent.a1``)."""

    aggregate: str
    reason: str = ""
    requested_by: str = ""


class ErasureResult(msgspec.Struct, frozen=True, kw_only=True):
    erasure_id: str
    aggregate: str
    requested_sequence: int
    executed_sequence: int


def keys_erased(aggregate: str) -> list[str]:
    """The names of the data keys erasing ``aggregate`` destroys: its own, and an agent's tasks' and executions',
    and its own policy set's (last: until then a policy replica can still record that the set forbids the agent
    every action, and every process reads the shredded set that way)."""
    aggregate_type, _, aggregate_id = aggregate.partition(".")
    if aggregate_type == AGENT_AGGREGATE and "." not in aggregate_id:
        own_set = f"{POLICY_AGGREGATE}.{agent_set_id(aggregate_id)}"
        return [aggregate, *(agent_data_key(t, aggregate_id) for t in AGENT_KEYED_TYPES), own_set]
    return [aggregate]


def check_aggregate(aggregate: str) -> str:
    if not _AGGREGATE_RE.match(aggregate) or aggregate.startswith(f"{AGGREGATE_TYPE}."):
        raise ValidationError(
            f"expected <type>.<id> of another service's aggregate (e.g. agent.a1), got {aggregate!r}",
            field="aggregate",
        )
    return aggregate


#: The namespace of erasure ids (UUIDv5 of the aggregate erased).
_ERASURES = uuid.UUID("6f1d3c7e-2b0a-5c1e-9a4d-0e5b8c2f7a31")


def erasure_id_of(aggregate: str) -> str:
    """The one erasure of ``aggregate``: a request made again (after a lost answer, or a crash between the
    steps) continues it instead of starting a second one that the GDPR report would list as well."""
    return str(uuid.uuid5(_ERASURES, aggregate))


async def erase(store: EventStore, datakeys: DataKeys, request: EraseRequest, *, principal: str) -> ErasureResult:
    """Record the request, destroy the data key, record the execution; a request made again continues the
    aggregate's erasure where it stopped (and answers the same result once it was executed)."""
    aggregate = check_aggregate(request.aggregate)
    erasure_id = erasure_id_of(aggregate)
    recorded = await store.load(AGGREGATE_TYPE, erasure_id, CODEC)
    if not recorded:
        aggregate_type, _, aggregate_id = aggregate.partition(".")
        if aggregate_type in AGENT_KEYED_TYPES and "." not in aggregate_id and not await datakeys.exists(aggregate):
            raise ValidationError(
                f"{aggregate} has no data key of its own (or it was destroyed): an agent's tasks and executions are"
                " sealed with the agent's key; erase agent.<agent id> to shred all of them",
                field="aggregate",
            )
        requested = ErasureRequested(
            aggregate=aggregate, requested_by=request.requested_by or principal, reason=request.reason
        )
        recorded = await store.append(
            AGGREGATE_TYPE, erasure_id, [requested], CODEC, expected=NEW_AGGREGATE, correlation_id=erasure_id
        )
    done = [r for r in recorded if isinstance(r.event, ErasureExecuted)]
    if not done:
        keys = keys_erased(aggregate)
        for key in keys:
            await datakeys.destroy(key)
        executed = ErasureExecuted(
            aggregate=aggregate, data_key=f"{aggregate}/*", data_keys=tuple(f"{k}/*" for k in keys)
        )
        done = await store.append(
            AGGREGATE_TYPE, erasure_id, [executed], CODEC, expected=recorded[-1].tip, correlation_id=erasure_id
        )
    return ErasureResult(
        erasure_id=erasure_id,
        aggregate=aggregate,
        requested_sequence=recorded[0].sequence,
        executed_sequence=done[0].sequence,
    )
