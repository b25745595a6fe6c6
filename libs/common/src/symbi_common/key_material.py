"""One key file: base64 key material, written atomically, private keys 0600 (never briefly wider).

The layout of the files is in :mod:`symbi_common.keyfiles`.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from symbi_common.crypto import Signer, WrapKey
from symbi_common.errors import KeyringError


def write_key_file(path: Path, data: bytes, *, private: bool) -> None:
    """Write base64 key material atomically; private files are created 0600 (never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(data) + b"\n")
    os.chmod(tmp, 0o600 if private else 0o644)
    os.replace(tmp, path)


def read_key_file(path: Path) -> bytes:
    try:
        return base64.b64decode(path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise KeyringError(f"key file {path} does not exist; create the keyring with `symbi keys init`") from None
    except ValueError:
        raise KeyringError(f"key file {path} is not valid base64") from None


def load_signer(path: Path) -> Signer:
    """Load one service's private Ed25519 signing key."""
    seed = read_key_file(path)
    if len(seed) != 32:
        raise KeyringError(f"key file {path} does not hold a 32-byte Ed25519 seed")
    return Signer(seed)


def load_wrap_key(path: Path) -> WrapKey:
    """Load one service's private X25519 wrap key (opens the data keys sealed to it)."""
    raw = read_key_file(path)
    if len(raw) != 32:
        raise KeyringError(f"key file {path} does not hold a 32-byte X25519 key")
    return WrapKey(raw)
