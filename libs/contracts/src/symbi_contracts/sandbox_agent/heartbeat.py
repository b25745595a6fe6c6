"""A sandbox host's heartbeat in the ``HOSTS`` bucket, signed by the host.

Key ``<host_id>``; value the JSON entry of docs/contracts/tasks.md; headers :data:`H_SIGNING_KEY` (the key id)
and :data:`H_SIGNATURE` (base64 Ed25519 over the exact value bytes), made with the daemon's current signing key.
A host that has (or had: revoked keys count, :meth:`KeyRegistry.has_host_keys`) a key of its own (``symbi keys
add-host``) is believed only when a key of its own that is not revoked signed: the scheduler
passes over an entry of such a host that is unsigned, signed by another key, or not newer than the last one it
took, and over a removal of its key (a host's loss is still seen when its heartbeats stop). Any host may write
any key of the bucket (one NATS user for all hosts), so without this a taken-over host could make another look
lost, full or alive. Hosts without a key of their own are believed as before.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from symbi_common.crypto import Signer
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_document import REVOKED

H_SIGNING_KEY = "Symbi-Host-Key"
H_SIGNATURE = "Symbi-Host-Signature"


def signed_headers(value: bytes, signer: Signer) -> dict[str, str]:
    """The headers that sign ``value`` with ``signer``."""
    return {H_SIGNING_KEY: signer.key_id, H_SIGNATURE: base64.b64encode(signer.sign(value)).decode()}


def unsigned_reason(value: bytes, headers: Mapping[str, str], registry: KeyRegistry, host_id: str) -> str | None:
    """None when a key bound to ``host_id`` and not revoked signed ``value``; otherwise why it is not believed."""
    key_id = headers.get(H_SIGNING_KEY, "")
    key = registry.key(key_id) if key_id else None
    if key is None:
        return "not signed by a key of the registry"
    if key.host != host_id or key.status == REVOKED:
        return f"signed by key {key_id}, not by a key of host {host_id}"
    try:
        signature = base64.b64decode(headers.get(H_SIGNATURE, ""), validate=True)
    except (binascii.Error, ValueError):
        return "its signature is not base64"
    if not registry.verifier(key_id).verify(value, signature):
        return f"its signature does not verify with key {key_id}"
    return None
