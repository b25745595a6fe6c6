"""Witness cosignatures in the C2SP tlog-cosignature format (``cosignature/v1``, Ed25519).

A cosignature is one more signature line on a checkpoint note::

    — <witness name> base64(key id[4] ‖ timestamp[8, big-endian] ‖ Ed25519 signature[64])

The key id is SHA-256(name ‖ "\\n" ‖ 0x04 ‖ public key)[:4]. The signature covers::

    cosignature/v1
    time <timestamp>
    <the checkpoint note body, with its final newline>

and states that, at that time, this was the largest consistent tree the witness had seen for the
origin. A verifier is configured with the witnesses it trusts (:class:`WitnessKey`) and ignores
every other line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from symbi_common.crypto import Signer, Verifier

from symbi_tlog.errors import CosignatureInvalid
from symbi_tlog.notes import parse_checkpoint

COSIGNATURE_TYPE = b"\x04"
_DASH = "\u2014 "


def cosignature_key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + COSIGNATURE_TYPE + public_key).digest()[:4]


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A witness a verifier trusts: its name and Ed25519 public key."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return cosignature_key_id(self.name, self.public_key)

    def vkey(self) -> str:
        """The verifier key string ``<name>+<hex key id>+<base64(0x04 ‖ key)>``."""
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(COSIGNATURE_TYPE + self.public_key).decode()}"

    @classmethod
    def parse(cls, vkey: str) -> WitnessKey:
        """Parse a verifier key string; :class:`CosignatureInvalid` says what is wrong with it."""
        name, sep, rest = vkey.strip().partition("+")
        hash_hex, sep2, blob = rest.partition("+")
        if not (name and sep and sep2):
            raise CosignatureInvalid(f"witness key {vkey!r} is not <name>+<key id>+<base64 key>")
        try:
            raw = base64.b64decode(blob, validate=True)
            key_id = bytes.fromhex(hash_hex)
        except (binascii.Error, ValueError):
            raise CosignatureInvalid(f"witness key {vkey!r} has a bad key id or key encoding") from None
        if len(raw) != 33 or raw[:1] != COSIGNATURE_TYPE:
            raise CosignatureInvalid(f"witness key {vkey!r} is not an Ed25519 cosignature/v1 key (type 0x04)")
        key = cls(name, raw[1:])
        if key.key_id != key_id:
            raise CosignatureInvalid(f"witness key {vkey!r}: the key id does not match the name and key")
        return key


def cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def cosign(body: str, signer: Signer, name: str, timestamp: int) -> str:
    """The cosignature line (with its newline) of ``signer`` named ``name`` on checkpoint ``body``."""
    if not 0 <= timestamp < 2**63:
        raise ValueError("a cosignature timestamp is a POSIX time below 2**63")
    signature = signer.sign(cosigned_message(body, timestamp))
    blob = cosignature_key_id(name, signer.public_key) + struct.pack(">Q", timestamp) + signature
    return f"{_DASH}{name} {base64.b64encode(blob).decode()}\n"


def add_signatures(note: str, lines: str) -> str:
    """``note`` with the signature ``lines`` appended (lines already present are not repeated)."""
    present = set(note.partition("\n\n")[2].splitlines())
    new = [line for line in lines.splitlines() if line and line not in present]
    return note + "".join(f"{line}\n" for line in new)


@dataclass(frozen=True, slots=True)
class Cosignatures:
    """Which trusted witnesses cosigned a note: ``valid`` (name → timestamp) and ``forged`` (names whose
    line carries their key id but whose signature does not verify)."""

    valid: dict[str, int]
    forged: list[str]


def verify_cosignatures(note: str, witnesses: list[WitnessKey] | tuple[WitnessKey, ...]) -> Cosignatures:
    """Check the cosignatures of the trusted ``witnesses`` on ``note``; other lines are ignored."""
    _, signatures = parse_checkpoint(note)
    body = note.partition("\n\n")[0] + "\n"
    valid: dict[str, int] = {}
    forged: list[str] = []
    for witness in witnesses:
        lines = [sig for name, kid, sig in signatures if name == witness.name and kid == witness.key_id]
        ok = [
            ts
            for ts, sig in ((int.from_bytes(s[:8], "big"), s[8:]) for s in lines if len(s) == 72)
            if Verifier(witness.public_key).verify(cosigned_message(body, ts), sig)
        ]
        if ok:
            valid[witness.name] = max(ok)
        elif lines:
            forged.append(witness.name)
    return Cosignatures(valid, forged)
