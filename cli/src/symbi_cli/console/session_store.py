"""Console sessions sealed on disk with AES-256-GCM under the console's own key.

Layout under the console's state directory (``<home>/console``, 0700)::

    key                      32 random bytes (base64), 0600, created on the console's first start
    sessions/<sha256(sid)>   nonce ‖ AES-256-GCM(session record), 0600

A file is named by the hash of the session id, so the directory does not list the ids the browsers hold;
the file name is the associated data of its seal, so a sealed record moved to another name does not open.
A record that does not open (another key, altered bytes) reads as no session. Why on disk and not in the
cookie: logging out, or a token the services refuse, deletes the session here, so a copied cookie stops
working at once; the cookie never carries the token, sealed or not.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from symbi_common.crypto import KEY_SIZE, NONCE_SIZE, AeadKey
from symbi_common.errors import SymbiError
from symbi_common.key_material import read_key_file, write_key_file

_CONTEXT = b"symbi-console-session-v1\x00"


class ConsoleKeyError(SymbiError):
    """The console's session key is missing, malformed or readable by others."""

    code = "console_key_error"


def load_or_create_key(path: Path) -> AeadKey:
    """The console's AES-256 key at ``path``: created 0600 if absent; refused if others may read it."""
    if not path.exists():
        write_key_file(path, os.urandom(KEY_SIZE), private=True)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConsoleKeyError(
            f"the console key {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}` or delete it (every console session ends)"
        )
    raw = read_key_file(path)
    if len(raw) != KEY_SIZE:
        raise ConsoleKeyError(f"the console key {path} does not hold {KEY_SIZE} bytes; delete it to make a new one")
    return AeadKey("console", raw)


class SessionStore:
    """Put, get and delete sealed session records by session id."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir = state_dir / "sessions"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self._key = load_or_create_key(state_dir / "key")

    def _name(self, sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    def _seal(self, name: str, record: bytes) -> bytes:
        nonce, ciphertext = self._key.encrypt(record, _CONTEXT + name.encode())
        return nonce + ciphertext

    def _open(self, name: str, sealed: bytes) -> bytes | None:
        if len(sealed) <= NONCE_SIZE:
            return None
        return self._key.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _CONTEXT + name.encode())

    def put(self, sid: str, record: bytes) -> None:
        name = self._name(sid)
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._seal(name, record))
        os.replace(tmp, self.dir / name)

    def get(self, sid: str) -> bytes | None:
        """The record of ``sid``, or None if there is none or it does not open under this key."""
        name = self._name(sid)
        try:
            sealed = (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None
        record = self._open(name, sealed)
        if record is None:
            self.delete(sid)
        return record

    def delete(self, sid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / self._name(sid)).unlink()

    def sweep(self, keep: Callable[[bytes], bool]) -> int:
        """Delete every record that does not open or that ``keep`` rejects (an expired token); how many went."""
        gone = 0
        for path in self.dir.iterdir():
            record = None if path.name.startswith(".") else self._open(path.name, path.read_bytes())
            if record is None or not keep(record):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                gone += 1
        return gone
