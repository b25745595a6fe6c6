"""Signed checkpoints in the C2SP signed-note format (https://c2sp.org/signed-note, /tlog-checkpoint).

A checkpoint note is::

    <origin>
    <tree size>
    <base64 root hash>

    — <key name> <base64(key hash[4] ‖ Ed25519 signature[64])>

The signature covers the note text (the three lines, each ending in a newline). The key hash is the
first four bytes of SHA-256(key name ‖ "\\n" ‖ 0x01 ‖ public key), 0x01 being the Ed25519 signature
type, so a verifier picks the right key by name and hash and never trusts the name alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from symbi_common.crypto import Signer, Verifier

from symbi_tlog.errors import CheckpointInvalid

ED25519_TYPE = b"\x01"
_DASH = "\u2014 "


def key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_TYPE + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The note verifier key string ``<name>+<hex key hash>+<base64(0x01 ‖ key)>`` (as Go's ``note`` package writes it)."""
    return f"{name}+{key_hash(name, public_key).hex()}+{base64.b64encode(ED25519_TYPE + public_key).decode()}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: the origin (log name), tree size and root hash."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer, key_name: str) -> str:
    """The signed note text of ``checkpoint``."""
    body = checkpoint.body()
    signature = signer.sign(body.encode())
    blob = base64.b64encode(key_hash(key_name, signer.public_key) + signature).decode()
    return f"{body}\n{_DASH}{key_name} {blob}\n"


def parse_checkpoint(note: str) -> tuple[Checkpoint, list[tuple[str, bytes, bytes]]]:
    """Split a note into its checkpoint and its signature lines ``(name, key hash, signature)``; no checking."""
    body, sep, sigs = note.partition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise CheckpointInvalid("a signed note needs a blank line between text and signatures and a final newline")
    lines = body.split("\n")
    if len(lines) < 3:
        raise CheckpointInvalid("a checkpoint needs an origin line, a size line and a root hash line")
    origin, size_line, root_line = lines[0], lines[1], lines[2]
    if (
        not origin
        or not (size_line.isascii() and size_line.isdigit())
        or (size_line != "0" and size_line.startswith("0"))
    ):
        raise CheckpointInvalid(f"bad checkpoint header: origin {origin!r}, size {size_line!r}")
    try:
        root = base64.b64decode(root_line, validate=True)
    except binascii.Error:
        raise CheckpointInvalid(f"root hash {root_line!r} is not base64") from None
    if len(root) != 32:
        raise CheckpointInvalid(f"root hash is {len(root)} bytes, not 32")
    signatures: list[tuple[str, bytes, bytes]] = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise CheckpointInvalid(f"signature line {line!r} does not start with an em dash and a space")
        name, _, blob = line[len(_DASH) :].rpartition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error:
            raise CheckpointInvalid(f"signature of {name!r} is not base64") from None
        if not name or len(raw) < 5:
            raise CheckpointInvalid(f"malformed signature line {line!r}")
        signatures.append((name, raw[:4], raw[4:]))
    return Checkpoint(origin, int(size_line), root), signatures


def verify_checkpoint(note: str, *, key_name: str, public_key: bytes, origin: str | None = None) -> Checkpoint:
    """The checkpoint of ``note`` if it carries a valid signature by (``key_name``, ``public_key``).

    Raises :class:`CheckpointInvalid` saying why not (malformed, other origin, no matching signature,
    bad signature).
    """
    checkpoint, signatures = parse_checkpoint(note)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointInvalid(f"checkpoint is for log {checkpoint.origin!r}, not {origin!r}")
    expected = key_hash(key_name, public_key)
    mine = [sig for name, khash, sig in signatures if name == key_name and khash == expected]
    if not mine:
        raise CheckpointInvalid(f"checkpoint carries no signature by key {key_name!r} ({expected.hex()})")
    body = note.partition("\n\n")[0] + "\n"
    if not any(Verifier(public_key).verify(body.encode(), sig) for sig in mine):
        raise CheckpointInvalid(f"the signature by {key_name!r} does not verify: the checkpoint is forged or altered")
    return checkpoint
