"""One key file: base64 key material, written atomically, private keys 0600 (never briefly wider).

The layout of the files is in :mod:`symbi_common.keyfiles`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from pathlib import Path

from symbi_common.crypto import Signer, WrapKey
from symbi_common.errors import KeyringError


def write_key_file(path: Path, data: bytes, *, private: bool) -> None:
    """Write base64 key material atomically; private files are created 0600 (never briefly wider)."""
    write_atomically(path, base64.b64encode(data) + b"\n", 0o600 if private else 0o644)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` at once, mode ``mode``, synced.

    The file keeps its directory's owner: root writing into a directory handed to a service's user (a deployment's
    ``keys/<service>``) leaves a file that user can read, not one of root's. The temporary file is new and unique
    (0600 until it is complete; never a file or link someone with rights on the directory put there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if os.geteuid() == 0:
                owner = os.stat(path.parent)
                os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
