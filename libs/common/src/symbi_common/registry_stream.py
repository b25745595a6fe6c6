"""Key registry versions on JetStream: the ``REGISTRY`` stream, how they get there and their history.

Every root-signed registry version is one message on ``registry.version`` in the ``REGISTRY``
stream (file storage, ``deny_delete``, ``deny_purge``): the exact ``registry.json`` bytes and the
root's signature over them (:class:`SignedRegistry`). Only the ``operator`` NATS user may publish
there (``symbi keys`` and ``symbi up``); services only read it, and verify every version against
the root public key they pin before they use it (:mod:`symbi_common.livekeys`). The stream is the
registry's audit trail: :func:`check_history` verifies it end to end — each version signed by the
root, each newer than the last, each keeping the ``changes`` of the one before.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from symbi_common.errors import KeyringError, RegistryRollback
from symbi_common.keyring import (
    REGISTRY_FILE,
    REGISTRY_SIG_FILE,
    KeyRegistry,
    RegistryChange,
    RegistryDocument,
)
from symbi_common.streams import REGISTRY_STREAM, read_subject

REGISTRY_SUBJECT = "registry.version"


class SignedRegistry(msgspec.Struct, frozen=True):
    """One registry version as the root key signed it: the exact document bytes and the signature."""

    registry: bytes
    signature: bytes

    def verified(self, root_public_key: bytes) -> RegistryDocument:
        """The document, if the root key of ``root_public_key`` signed it (else :class:`RegistrySignatureInvalid`)."""
        return KeyRegistry.from_signed(self.registry, self.signature, root_public_key).document


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SignedRegistry)


def encode_signed(signed: SignedRegistry) -> bytes:
    return _encoder.encode(signed)


def decode_signed(data: bytes) -> SignedRegistry:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise KeyringError(f"a key registry message is malformed: {exc}") from None


def read_signed_files(keys_dir: Path) -> SignedRegistry:
    """The registry version in ``keys_dir`` (a keyring or one service's directory), unverified."""
    try:
        data = (keys_dir / REGISTRY_FILE).read_bytes()
        sig = base64.b64decode((keys_dir / REGISTRY_SIG_FILE).read_bytes())
    except FileNotFoundError as exc:
        raise KeyringError(f"no key registry at {exc.filename}; create it with `symbi keys init`") from None
    return SignedRegistry(data, sig)


async def publish(nc: Any, signed: SignedRegistry, root_public_key: bytes) -> int | None:
    """Publish ``signed`` to ``REGISTRY`` if it is newer than the stream's newest valid version; returns
    its version if published.

    Needs the ``operator`` NATS credential. Refuses (:class:`RegistrySignatureInvalid`) a version the
    root key did not sign, and (:class:`RegistryRollback`) an older one than the stream already holds
    (another document under the same version number too); the same version again is not republished.
    """
    doc = signed.verified(root_public_key)
    newest, _ = await newest_version(nc, root_public_key)
    if newest is not None:
        current = newest.verified(root_public_key)
        if current == doc:
            return None
        if current.version >= doc.version:
            raise RegistryRollback(
                f"the REGISTRY stream already holds v{current.version}; not publishing v{doc.version}",
                offered=doc.version,
                current=current.version,
            )
    digest = hashlib.sha256(signed.registry).hexdigest()[:16]
    await nc.jetstream().publish(
        REGISTRY_SUBJECT,
        encode_signed(signed),
        stream=REGISTRY_STREAM,
        headers={"Nats-Msg-Id": f"registry-v{doc.version}-{digest}"},
    )
    return doc.version


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message of the ``REGISTRY`` stream as checked: its version and new changes, or what is wrong."""

    sequence: int
    version: int | None
    changes: tuple[RegistryChange, ...]
    problem: str | None = None


def check_history(messages: list[tuple[int, bytes]], root_public_key: bytes) -> list[HistoryEntry]:
    """Check the ``REGISTRY`` stream's messages ``(sequence, data)`` in order (pure).

    A message is accepted if the root key signed it, its version is newer than the last accepted
    one and its ``changes`` start with the last accepted version's; anything else is an entry with a
    ``problem`` (a rollback attempt, a forgery, rewritten history) and does not count as accepted.
    """
    out: list[HistoryEntry] = []
    accepted: RegistryDocument | None = None
    for sequence, data in messages:
        try:
            doc = decode_signed(data).verified(root_public_key)
        except KeyringError as exc:
            out.append(HistoryEntry(sequence, None, (), str(exc)))
            continue
        if accepted is not None and doc.version <= accepted.version:
            problem = f"v{doc.version} after v{accepted.version}: not newer (a rollback)"
            out.append(HistoryEntry(sequence, doc.version, (), problem))
            continue
        before = list(accepted.changes) if accepted is not None else []
        if doc.changes[: len(before)] != before:
            problem = f"v{doc.version} does not keep the changes of v{accepted.version if accepted else 0}"
            out.append(HistoryEntry(sequence, doc.version, (), problem))
            continue
        out.append(HistoryEntry(sequence, doc.version, tuple(doc.changes[len(before) :])))
        accepted = doc
    return out


async def newest_version(
    nc: Any, root_public_key: bytes, history: list[tuple[int, bytes]] | None = None
) -> tuple[SignedRegistry | None, int]:
    """The newest version on ``REGISTRY`` that :func:`check_history` accepts (``None`` if none), and
    the stream sequence of the last message (0 if none). A rollback or forgery published after it
    does not hide it."""
    messages = await read_history(nc) if history is None else history
    accepted = [e.sequence for e in check_history(messages, root_public_key) if e.problem is None]
    by_sequence = dict(messages)
    newest = decode_signed(by_sequence[accepted[-1]]) if accepted else None
    return newest, messages[-1][0] if messages else 0


async def read_history(nc: Any) -> list[tuple[int, bytes]]:
    """Every message of the ``REGISTRY`` stream, ``(sequence, data)``, in order."""
    out: list[tuple[int, bytes]] = []
    async for batch in read_subject(nc, REGISTRY_STREAM, REGISTRY_SUBJECT):
        out.extend((m.sequence, m.data) for m in batch)
    return out
