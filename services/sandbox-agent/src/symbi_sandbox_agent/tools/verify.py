"""SchemaPin verification of a tool definition, offline, against the operator's trust bundle. No I/O.

The expected domain of a server comes from its registration (the operator), never from the server; the
discovery document (public key, revoked keys) and any revocation document come from the trust bundle named
in the runtime's configuration, so verification needs no network and never blocks on one. The signature
travels in the tool's ``_meta`` under :data:`SIGNATURE_META` and signs the canonical definition
(:func:`symbi_sandbox_agent.tools.canon.definition_of`).

Key pinning is ours, not SchemaPin's store: schemapin's ``check_and_pin`` pins a key on first use *before* it
checks the signature, so a forged first definition would pin the forger's key. Here each verification runs
against a throwaway store holding only the key already pinned in the registry (event-sourced), and the
caller pins a key (``toolserver.key_pinned``) only after a *valid* verification.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from schemapin.bundle import SchemaPinTrustBundle
from schemapin.crypto import KeyManager
from schemapin.verification import KeyPinStore, verify_schema_offline

#: Where a server puts a tool's SchemaPin signature (base64 ECDSA P-256 over the canonical definition).
SIGNATURE_META = "schemapin/signature"


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome: ``verified``, ``unsigned`` (no domain configured), or a failure code."""

    outcome: str
    fingerprint: str = ""
    message: str = ""

    @property
    def valid(self) -> bool:
        return self.outcome == "verified"


def empty_bundle() -> SchemaPinTrustBundle:
    return SchemaPinTrustBundle(schemapin_bundle_version="1.2", created_at="", documents=[], revocations=[])


def load_bundle(text: str) -> SchemaPinTrustBundle:
    """A trust bundle from its JSON; raises ``ValueError`` naming what is wrong."""
    try:
        return SchemaPinTrustBundle.from_json(text)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a SchemaPin trust bundle: {exc!r}") from exc


def signature_of(tool: dict[str, Any]) -> str:
    meta = tool.get("_meta") or {}
    signature = meta.get(SIGNATURE_META, "") if isinstance(meta, dict) else ""
    return signature if isinstance(signature, str) else ""


def verify(
    server: str,
    definition: dict[str, Any],
    signature: str,
    *,
    domain: str,
    bundle: SchemaPinTrustBundle,
    pinned: str,
) -> Verified:
    """Verify ``definition`` of ``server`` for ``domain`` against ``bundle``; ``pinned`` is the key
    fingerprint the registry has pinned for the server (empty: none yet)."""
    if not domain:
        return Verified("unsigned")
    if not signature:
        return Verified("signature_missing", message=f"server {server!r} must sign its tools for {domain}")
    discovery = bundle.find_discovery(domain)
    if discovery is None:
        return Verified("unknown_domain", message=f"the trust bundle has no key for domain {domain!r}")
    try:
        fingerprint = KeyManager.calculate_key_fingerprint_from_pem(str(discovery.get("public_key_pem", "")))
    except Exception as exc:
        return Verified("discovery_invalid", message=f"the trust bundle's key for {domain!r} is unreadable: {exc}")
    store = KeyPinStore.from_json(json.dumps({f"{server}@{domain}": pinned} if pinned else {}))
    result = verify_schema_offline(
        definition, signature, domain, server, discovery, bundle.find_revocation(domain), store
    )
    if not result.valid:
        code = result.error_code.value if result.error_code else "signature_invalid"
        return Verified(code, fingerprint, result.error_message or code)
    return Verified("verified", fingerprint)
