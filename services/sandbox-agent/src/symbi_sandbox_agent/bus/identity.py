"""Agents' identity keys: held by the host's sandbox-agent, never inside a container.

An agent's Ed25519 key is derived from the host service's signing key (HMAC-SHA256 of its seed and the agent
id), so every host holding the sandbox-agent key signs as the same agent key, and nothing extra is stored.
Its public key is registered in KV bucket ``AGENT_KEYS`` with the host key's signature over it; a receiver
trusts a sender key only through that signature, checked against the root-signed key registry (an unknown
or badly signed entry is refused: fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import nats.js.errors
from symbi_common.crypto import Signer, Verifier
from symbi_common.errors import KeyringError
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_changes import HOST_SERVICE
from symbi_contracts.bus import AGENT_KEY_DECODER, AgentKey, Envelope, agent_key_statement, encode

from symbi_sandbox_agent.bus.codec import Refused, check_signature


class UnknownSender(KeyringError):
    """No trusted identity key is registered for the sending agent."""

    code = "unknown_sender_key"


def derive(host: Signer, agent_id: str) -> Signer:
    """The agent's identity key under ``host``'s key (deterministic, so hosts sharing the key agree)."""
    return Signer(hmac.new(host.seed(), b"symbi-agent-identity\0" + agent_id.encode(), hashlib.sha256).digest())


class Identities:
    """Signing keys of the agents this host runs, and verified public keys of any agent."""

    def __init__(self, kv: Any, host: Signer, registry: KeyRegistry) -> None:
        self.kv = kv
        self.host = host
        self.registry = registry
        self._signers: dict[str, Signer] = {}
        #: agent id → (the host key that vouched for its key, the key): the host key is checked at every use.
        self._verifiers: dict[str, tuple[str, Verifier]] = {}
        self._signed_by = host.key_id

    async def signer(self, agent_id: str) -> Signer:
        """The agent's signing key; its public key registered (once per process) before first use."""
        found = self._signers.get(agent_id)
        if found is not None and self._signed_by == self.host.key_id:
            return found
        if self._signed_by != self.host.key_id:  # the host key rotated: register every agent key again
            self._signers.clear()
            self._signed_by = self.host.key_id
        signer = derive(self.host, agent_id)
        entry = AgentKey(
            agent_id=agent_id,
            public_key=signer.public_key,
            host_key_id=self.host.key_id,
            host_signature=self.host.sign(agent_key_statement(agent_id, signer.public_key)),
        )
        await self.kv.put(agent_id, encode(entry))
        self._signers[agent_id] = signer
        self._verifiers[agent_id] = (self.host.key_id, Verifier(signer.public_key))
        return signer

    def _host_key(self, key_id: str) -> bool:
        """Whether ``key_id`` is a sandbox-agent key the registry trusts now (not revoked since)."""
        try:
            return self.registry.service_of(key_id) == HOST_SERVICE and not self.registry.is_revoked(key_id)
        except KeyringError:
            return False

    async def verifier(self, agent_id: str, *, fresh: bool = False) -> Verifier:
        """The sender's verified public key; :class:`UnknownSender` if none is registered or trusted. A key is
        remembered with the host key that vouched for it, and trusted only while that one is (a revoked host
        key vouches for nothing from then on); ``fresh``: read the registered key again."""
        found = self._verifiers.get(agent_id)
        if found is not None and not fresh and self._host_key(found[0]):
            return found[1]
        self._verifiers.pop(agent_id, None)
        try:
            got = await self.kv.get(agent_id)
        except nats.js.errors.KeyNotFoundError:
            raise UnknownSender(f"no identity key is registered for agent {agent_id}") from None
        except nats.js.errors.InvalidKeyError:  # a sender named on the wire that no key can be filed under
            raise UnknownSender(f"{agent_id[:80]!r} is not an agent id with an identity key") from None
        if got is None or not got.value:
            raise UnknownSender(f"no identity key is registered for agent {agent_id}")
        try:
            entry = AGENT_KEY_DECODER.decode(got.value)
        except Exception as exc:
            raise UnknownSender(f"the identity key entry of agent {agent_id} is malformed: {exc}") from None
        try:
            host = self.registry.verifier(entry.host_key_id)
        except KeyringError as exc:
            raise UnknownSender(f"agent {agent_id}'s key is vouched for by an unknown key: {exc}") from None
        if not self._host_key(entry.host_key_id):
            raise UnknownSender(f"agent {agent_id}'s key is vouched for by {entry.host_key_id}, not a host key")
        if entry.agent_id != agent_id or not host.verify(
            agent_key_statement(agent_id, entry.public_key), entry.host_signature
        ):
            raise UnknownSender(f"the identity key entry of agent {agent_id} is not signed by its host")
        verifier = Verifier(entry.public_key)
        self._verifiers[agent_id] = (entry.host_key_id, verifier)
        return verifier

    def forget(self, agent_id: str) -> None:
        self._verifiers.pop(agent_id, None)

    async def check_signed(self, envelope: Envelope) -> None:
        """:class:`Refused` unless the envelope is signed by its sender's registered key. A signature the
        remembered key does not verify is checked once more against the key registered now (the sender's host
        key may have rotated, which changes the agent's key)."""
        sender = envelope.meta.sender
        for fresh in (False, True):
            try:
                verifier = await self.verifier(sender, fresh=fresh)
            except UnknownSender as exc:
                raise Refused("unknown_sender_key", exc.message) from None
            try:
                check_signature(envelope, verifier)
                return
            except Refused:
                if fresh:
                    raise
