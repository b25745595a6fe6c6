"""Least-privilege NATS users: one per service, ``operator`` for people's tools, ``admin`` for provisioning.

A service may publish only its own aggregates' events and snapshots (the same subjects its signing
key is authorised for in the key registry), its own data keys in ``DATAKEYS``, the commands it calls (:data:`COMMAND_CALLS`), and the
exact JetStream API calls it needs: stream info, direct/message gets and consumers on the streams
it reads, acks. It may not create, update, purge or delete a stream or a KV bucket, nor write
another service's KV keys: only ``admin`` may manage streams, and ``admin`` is used by ``symbi up``
(or a deployment's provisioning job) before the services start, never given to a service.
Anonymous connections are refused. TLS between hosts is :func:`tls_config` (server) and
:func:`symbi_common.nats_client.client_tls` (clients). How a client connects (URLs, credentials, TLS) is
:mod:`symbi_common.nats_client`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from symbi_common.decision_queue import DECISIONS_STREAM, decisions_subject
from symbi_common.keyring import AGGREGATE_READERS, SERVICE_SUBJECTS

OPERATOR = "operator"
ADMIN = "admin"

_API = "$JS.API"

#: Streams (and ``KV_<bucket>`` streams) each service reads, beyond EVENTS, SNAPSHOTS and KV_DATAKEYS.
_EXTRA_READS: Mapping[str, tuple[str, ...]] = {
    "scheduler": ("WORK", "KV_HOSTS", "KV_SCHEDULER"),
    "sandbox-agent": ("WORK", "KV_HOSTS", "MESSAGES", "KV_AGENT_KEYS", "KV_BUS_DELIVERED", "KV_SECRETS"),
    # The audit service records every change of the secrets store (metadata only: it holds no secrets key).
    "audit": ("AUDIT", "KV_SECRETS"),
    # The decision-log batches of every enforcing process, which the policy service stores.
    "policy": (DECISIONS_STREAM,),
}
_COMMON_READS = ("EVENTS", "SNAPSHOTS", "KV_DATAKEYS", "KV_OPERATOR_REVOCATIONS", "REGISTRY")

#: What a service publishes beyond its events, snapshots and data keys (docs/contracts/tasks.md, audit's subjects).
_EXTRA_PUBLISH: Mapping[str, tuple[str, ...]] = {
    "scheduler": ("work.>", "$KV.SCHEDULER.>"),
    # The bus between agents: messages and dead letters, the agents' identity keys, delivered ids, and the
    # data keys of messages (``message.<sender>.<recipient>``, which no event subject covers).
    "sandbox-agent": (
        "$KV.HOSTS.>",
        "msg.>",
        "dlq.>",
        "$KV.AGENT_KEYS.>",
        "$KV.BUS_DELIVERED.>",
        "$KV.DATAKEYS.message.>",
    ),
    # The audit service crypto-shreds any aggregate's data key on an audited erasure (a KV purge).
    "audit": ("audit.>", "$KV.DATAKEYS.>"),
}


#: What every enforcing service calls on the policy decision point and the lifecycle (remote decisions,
#: suspending an agent after a violation). Its decision log goes to its own ``dlog.<service>`` instead.
_ENFORCER_CALLS = ("cmd.policy.decide", "cmd.policy.decide_batch", "cmd.lifecycle.suspend")

#: The other services' commands each service may call (request/reply). Every service may also call its own
#: (``cmd.<service>.>``); only the operator calls any command. ``symbi_contracts.subjects`` lists the same
#: callers per command, and a test keeps the two in line, so a compromised service cannot, say, replace a
#: policy set (``cmd.policy.update``) or order an erasure (``cmd.audit.erase``).
COMMAND_CALLS: Mapping[str, tuple[str, ...]] = {
    "lifecycle": (*_ENFORCER_CALLS, "cmd.policy.agent_events_caught_up"),
    "scheduler": (
        *_ENFORCER_CALLS,
        "cmd.lifecycle.assign_task",
        "cmd.lifecycle.complete_task",
        "cmd.sandbox-agent.*.suspend",
        "cmd.sandbox-agent.*.resume",
        "cmd.sandbox-agent.*.terminate",
    ),
    "policy": (),
    "audit": _ENFORCER_CALLS,
    "sandbox-agent": (
        *_ENFORCER_CALLS,
        "cmd.context.store",
        "cmd.context.retrieve",
        "cmd.context.forget",
        "cmd.context.ingest",
        "cmd.context.search_knowledge",
    ),
    "context": _ENFORCER_CALLS,
}


#: The commands the operator's tools send over NATS: none. The CLI reads streams and calls the services' HTTP
#: APIs with an operator token; so a leaked operator NATS credential orders no erasure, policy change or task.
OPERATOR_COMMANDS: tuple[str, ...] = ()


def stream_read_api(stream: str) -> list[str]:
    """The JetStream API subjects to read ``stream``: info, gets, and consumers (create, info, next).

    No service may delete a consumer (only ``admin``): otherwise one service could delete another's and stall
    its read model. NATS permissions match whole subject tokens and a consumer name is one token, so a rule
    cannot say "consumers whose name starts with ``<service>_``"; and each replica's consumer has a random
    name (``<service>_<follower>_<random>``, :mod:`symbi_common.follower`), so the names cannot be listed
    either. Consumers are therefore never deleted by their followers: they expire on the server once nobody
    pulls from them (``inactive_threshold``). Listing consumers is not allowed, nor reading another user's
    inboxes (whose ``$JS.ACK`` reply subjects name the consumer: :func:`inbox_prefix`), so a service cannot learn
    another's random consumer name; pulling from one anyway only makes that follower read again from its
    stored position (:class:`symbi_common.follower.DeliveryGap`).
    """
    return [
        f"{_API}.STREAM.INFO.{stream}",
        f"{_API}.STREAM.MSG.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}.>",
        f"{_API}.CONSUMER.CREATE.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{_API}.CONSUMER.INFO.{stream}.*",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
    ]


#: What the operator's ``symbi bus dlq`` may do beyond reading: replay a dead letter into its recipient's inbox,
#: and drop dead letters (they are operational leftovers, not history: no other stream's messages may go).
_OPERATOR_BUS = ("msg.direct.*", "$JS.API.STREAM.MSG.DELETE.DEADLETTER", "$JS.API.STREAM.PURGE.DEADLETTER")
#: What a service subscribes to beyond its commands and inboxes: the sandbox-agent, the replies to its agents'
#: requests and JetStream's max-deliveries advisories of the agents' inboxes (they become dead letters).
_EXTRA_SUBSCRIBE: Mapping[str, tuple[str, ...]] = {
    "sandbox-agent": ("msg.reply.>", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MESSAGES.*"),
}


def streams_read_by(service: str) -> tuple[str, ...]:
    if service == OPERATOR:
        return (
            "EVENTS",
            "SNAPSHOTS",
            "AUDIT",
            "KV_DATAKEYS",
            "KV_OPERATOR_REVOCATIONS",
            "REGISTRY",
            "MESSAGES",
            "DEADLETTER",
            "KV_SECRETS",
        )
    return (*_COMMON_READS, *_EXTRA_READS.get(service, ()))


def _own_subjects(service: str) -> list[str]:
    own = list(SERVICE_SUBJECTS[service])
    snapshots = [p.replace("evt.", "snap.", 1) for p in own]
    datakeys = [p.replace("evt.", "$KV.DATAKEYS.", 1) for p in own]
    return [*own, *snapshots, *datakeys]


def publish_allow(service: str) -> list[str]:
    """What ``service`` may publish: its own events, snapshots and data keys, and the API calls it needs."""
    if service == ADMIN:  # and the provisioning job publishes the keyring's registry version (root-signed)
        return [f"{_API}.>", "registry.version"]
    api = [f"{_API}.STREAM.NAMES"]  # which stream holds a subject (subscribing without naming the stream)
    reads = streams_read_by(service)
    for stream in (*reads, "AUDIT", DECISIONS_STREAM):
        if stream not in reads:
            api.append(f"{_API}.STREAM.INFO.{stream}")  # checked at start-up, never read
            continue
        api.extend(x for x in stream_read_api(stream) if x not in api)
    common = [*api, "$JS.FC.>"]  # replies: only to requests it received (``allow_responses``, :func:`_authorization`)
    if service == OPERATOR:  # `symbi token revoke` (services only read that bucket), the CLI's commands, and the
        # root-signed key registry versions (`symbi keys`; services only read them, and verify each), and the
        # sealed secrets of `symbi secrets` (no service may write them)
        return [
            *common,
            "$KV.OPERATOR_REVOCATIONS.>",
            "$KV.SECRETS.>",
            *OPERATOR_COMMANDS,
            "registry.version",
            *_OPERATOR_BUS,
        ]
    commands = [f"cmd.{service}.>", *(c for c in COMMAND_CALLS[service] if not c.startswith(f"cmd.{service}."))]
    own = [*_own_subjects(service), decisions_subject(service)]
    return [*own, *_EXTRA_PUBLISH.get(service, ()), *common, *commands]


def datakey_types(service: str) -> tuple[str, ...] | None:
    """The aggregate types (first tokens of ``DATAKEYS`` names) whose data keys ``service`` may hold: those
    sealed to it (the types it reads) and those it may write (its permissions). None: any key at all (the
    audit service, or a name that is not a service's). A service needs notices of these keys only: it can
    cache no other."""
    if service not in SERVICE_SUBJECTS:
        return None
    prefix = "$KV.DATAKEYS."
    writes = [s.removeprefix(prefix) for s in publish_allow(service) if s.startswith(prefix)]
    if ">" in writes or any(not w.endswith(".>") for w in writes):
        return None
    reads = [t for t, readers in AGGREGATE_READERS.items() if service in readers]
    return tuple(sorted({*reads, *(w.removesuffix(".>") for w in writes)}))


def inbox_prefix(user: str) -> str:
    """The inbox prefix of ``user``'s connections (``nats.connect(inbox_prefix=...)``, set by
    :func:`symbi_common.nats_client.server_options`).

    Replies and JetStream deliveries (pull batches, KV watches, direct gets) go to the requester's inbox. With
    nats-py's shared ``_INBOX.<id>`` any user allowed ``_INBOX.>`` could receive everyone's: memory text in
    ``cmd.context.retrieve`` replies, the ``DECISIONS`` batches of the policy service, and other followers'
    consumer names in the ``$JS.ACK.<stream>.<consumer>...`` reply subjects. Each user subscribes to its own.
    """
    return f"_INBOX_{user}"


def subscribe_allow(service: str) -> list[str]:
    """What ``service`` may subscribe to: its own commands (``cmd.sandbox-agent.<host>.<action>`` too) and
    its own inboxes (:func:`inbox_prefix`; consumers deliver to inboxes)."""
    inboxes = f"{inbox_prefix(service)}.>"
    # The people's credentials also read the shared ``_INBOX.>``: tools such as the NATS CLI use it, and whoever
    # holds them holds every key of the deployment already (the operator directory), so nothing is learnt.
    if service == OPERATOR:
        return [inboxes, "_INBOX.>", "audit.alert", "audit.live.>", "msg.>"]  # msg.>: `symbi bus tail` (metadata)
    if service == ADMIN:
        return [inboxes, "_INBOX.>"]
    return [f"cmd.{service}.>", inboxes, *_EXTRA_SUBSCRIBE.get(service, ())]


def nats_users() -> list[str]:
    """Every NATS user: one per service, ``operator`` and ``admin``."""
    return [*SERVICE_SUBJECTS, OPERATOR, ADMIN]


def authorization_config(passwords: Mapping[str, str]) -> str:
    """A nats-server ``authorization`` block for the given users (service name → password)."""
    return _authorization({user: json.dumps(password) for user, password in passwords.items()})


def deployment_authorization_config() -> str:
    """The same block for a deployment: each password from ``$NATS_<USER>_PASSWORD`` in the environment."""
    return _authorization({u: "$NATS_" + u.upper().replace("-", "_") + "_PASSWORD" for u in nats_users()})


def _authorization(password_values: Mapping[str, str]) -> str:
    users = []
    for user, password in password_values.items():
        # allow_responses: a user may publish one reply to a request it received (within 2 minutes), to the
        # requester's inbox; it may not publish to any other inbox.
        perms = {
            "publish": {"allow": publish_allow(user)},
            "subscribe": {"allow": subscribe_allow(user)},
            "allow_responses": True,
        }
        users.append(f"    {{user: {json.dumps(user)}, password: {password}, permissions: {json.dumps(perms)}}}")
    return "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"


# --- TLS -------------------------------------------------------------------------------------------


def tls_config(*, cert_file: str, key_file: str, ca_file: str, verify: bool = True) -> str:
    """A nats-server ``tls`` block: the server's certificate, and (``verify``) client certificates
    checked against ``ca_file``."""
    block = {"cert_file": cert_file, "key_file": key_file, "ca_file": ca_file, "verify": verify}
    return "tls " + json.dumps(block) + "\n"


__all__: Sequence[str] = [
    "ADMIN",
    "OPERATOR",
    "authorization_config",
    "deployment_authorization_config",
    "inbox_prefix",
    "nats_users",
    "publish_allow",
    "stream_read_api",
    "subscribe_allow",
    "tls_config",
]
