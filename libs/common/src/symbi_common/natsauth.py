"""Least-privilege NATS users: one per service, plus an ``operator`` for people and tools.

A service may publish only its own aggregates' events and snapshots (the same subjects its signing
key is authorised for in the key registry), commands to other services, the JetStream API it needs
(stream/consumer management, direct gets, acks, flow control), the ``DATAKEYS`` bucket and replies;
it may subscribe only to its own commands and to inboxes. So a compromised service cannot even
*store* an event under another service's subject — and if it could, every verifier would reject it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from symbi_common.keyring import SERVICE_SUBJECTS

OPERATOR = "operator"

#: What a service publishes beyond its events: the task contract (docs/contracts/tasks.md) and audit's subjects.
_EXTRA_PUBLISH: Mapping[str, tuple[str, ...]] = {
    "scheduler": ("work.>", "$KV.SCHEDULER.>"),
    "sandbox-agent": ("$KV.HOSTS.>",),
    "audit": ("audit.>",),
}

_COMMON_PUBLISH = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.DATAKEYS.>", "_INBOX.>", "cmd.>")


def publish_allow(service: str) -> list[str]:
    """What ``service`` may publish: its own events and snapshots, plus the common set."""
    if service == OPERATOR:
        # $KV.OPERATOR_REVOCATIONS: `symbi token revoke` (services only read that bucket).
        return ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>", "cmd.>", "$KV.OPERATOR_REVOCATIONS.>"]
    own = list(SERVICE_SUBJECTS[service])
    snapshots = [p.replace("evt.", "snap.", 1) for p in own]
    return [*own, *snapshots, *_EXTRA_PUBLISH.get(service, ()), *_COMMON_PUBLISH]


def subscribe_allow(service: str) -> list[str]:
    """What ``service`` may subscribe to: its own commands (``cmd.sandbox-agent.<host>.<action>`` too) and
    inboxes (consumers deliver to inboxes)."""
    if service == OPERATOR:
        return ["_INBOX.>", "audit.alert", "audit.live.>"]
    return [f"cmd.{service}.>", "_INBOX.>"]


def authorization_config(passwords: Mapping[str, str]) -> str:
    """A nats-server ``authorization`` block for the given users (service name → password)."""
    return _authorization({user: json.dumps(password) for user, password in passwords.items()})


def deployment_authorization_config() -> str:
    """The same block for a deployment: each password from ``$NATS_<USER>_PASSWORD`` in the environment."""
    users = [*SERVICE_SUBJECTS, OPERATOR]
    return _authorization({u: "$NATS_" + u.upper().replace("-", "_") + "_PASSWORD" for u in users})


def _authorization(password_values: Mapping[str, str]) -> str:
    users = []
    for user, password in password_values.items():
        perms = {"publish": {"allow": publish_allow(user)}, "subscribe": {"allow": subscribe_allow(user)}}
        users.append(f"    {{user: {json.dumps(user)}, password: {password}, permissions: {json.dumps(perms)}}}")
    return "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"


def with_credentials(url: str, user: str, password: str) -> str:
    """``nats://host:port`` with ``user:password@`` added."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def without_credentials(url: str) -> str:
    """The URL with any ``user:password@`` removed, for display."""
    parts = urlsplit(url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
