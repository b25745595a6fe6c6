"""The decision spool: one process's decisions on local disk until the ``DECISIONS`` stream has them.

A decision is written here (one ``write``, no ``fsync``) before the action it allows goes ahead, so a process
that dies — killed, crashed, or stopped while NATS does not take batches — loses none of its decisions: the
next process of the same service that starts with the same spool directory sends them, under the dead
process's source and, for the batch it was sending, under the same batch id (JetStream and the policy service
keep one copy of a batch sent twice). The data are in the kernel's page cache at once, so they outlive the
process; they outlive the host only once the kernel has written them back (no ``fsync``, to keep a decision
cheap).

One file per process, ``<source>.spool``, locked (``flock``) while the process lives; an unlocked file is an
orphan. The file is a sequence of frames: a kind byte, a 4-byte big-endian length, the payload.

- ``E``: a decision (its encoded :class:`~symbi_common.policy.events.LoggedDecision`);
- ``B``: a batch of the oldest unsent decisions is being sent (``{"id": batch id, "n": count}``);
- ``S``: that batch is stored.

When every decision is stored the file is truncated, so it stays small. A frame cut short (the host went down
during a write) ends the file; a frame that cannot be read stops the replay of that file with an error and
leaves it in place for an operator.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from symbi_common.errors import ConfigError, InfrastructureError, IntegrityError

log = structlog.get_logger(__name__)

_HEADER = struct.Struct(">cI")
ENTRY, BEGIN, STORED = b"E", b"B", b"S"
SUFFIX = ".spool"
_SOURCE_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}\Z")


class _Batch(msgspec.Struct, frozen=True):
    id: str
    n: int


_batch_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(_Batch)


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def frames(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The complete frames of ``data``, in order (a frame cut short at the end is left out)."""
    at = 0
    while at + _HEADER.size <= len(data):
        kind, size = _HEADER.unpack_from(data, at)
        end = at + _HEADER.size + size
        if end > len(data):
            return
        yield kind, data[at + _HEADER.size : end]
        at = end


@dataclass(frozen=True, slots=True)
class Unsent:
    """What a spool holds that the stream may not have: ``open`` is the batch being sent (its id and how many of
    ``entries`` it holds, from the first), ``entries`` every decision not known to be stored, oldest first."""

    entries: list[bytes]
    open: _Batch | None = None


def unsent(data: bytes) -> Unsent:
    """Read a spool's bytes. Raises :class:`IntegrityError` if its frames contradict each other."""
    entries: list[bytes] = []
    stored = 0
    open_batch: _Batch | None = None
    for kind, payload in frames(data):
        if kind == ENTRY:
            entries.append(payload)
            continue
        try:
            batch = _batch_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise IntegrityError(f"unreadable batch frame: {exc}") from None
        if kind == BEGIN and open_batch is None and 0 < batch.n <= len(entries) - stored:
            open_batch = batch
        elif kind == BEGIN and batch == open_batch:  # the same batch, begun again after a failed attempt
            continue
        elif kind == STORED and open_batch is not None and batch == open_batch:
            stored += batch.n
            open_batch = None
        else:
            raise IntegrityError(f"unexpected {kind!r} frame for batch {batch.id!r} after {stored} stored decisions")
    return Unsent(entries=entries[stored:], open=open_batch)


def spool_directory(path: str | Path) -> Path:
    """The spool directory, created (mode 0700) if missing; :class:`ConfigError` if it cannot be used."""
    directory = Path(path)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"decision spool directory {directory} cannot be created: {exc}", setting="policy") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"decision spool directory {directory} is not writable", setting="policy")
    return directory


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class DecisionSpool:
    """This process's spool file, locked until :meth:`close`."""

    def __init__(self, directory: Path, source: str) -> None:
        if not _SOURCE_RE.match(source):
            raise ConfigError(f"decision log source {source!r} is not a file name", setting="policy")
        self.path = directory / f"{source}{SUFFIX}"
        # Locked before it gets its name, so no starting process ever takes it for an orphan.
        hidden = directory / f".{source}.new"
        try:
            self._fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            _locked(self._fd)
            hidden.rename(self.path)
        except OSError as exc:
            raise ConfigError(f"decision spool {self.path} cannot be created: {exc}", setting="policy") from None
        self._open = ""

    def _write(self, data: bytes) -> None:
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            raise InfrastructureError(f"decision spool {self.path} not written: {exc}") from None
        if written != len(data):  # a full disk: the frame is cut short, and so is everything after it
            raise InfrastructureError(f"decision spool {self.path} not written: {written} of {len(data)} bytes")

    def append(self, entry: bytes) -> None:
        """Keep one decision (before the action it allows happens)."""
        self._write(frame(ENTRY, entry))

    def begin(self, batch_id: str, count: int) -> None:
        """The oldest ``count`` unsent decisions are being sent as batch ``batch_id``."""
        if self._open != batch_id:
            self._write(frame(BEGIN, _batch_encoder.encode(_Batch(batch_id, count))))
            self._open = batch_id

    def stored(self, batch_id: str, count: int, *, all_stored: bool) -> None:
        """The batch is stored; when nothing else is left to send, the file starts over. Failing to note it is
        logged, not raised: a replay would send the batch again under its id, and it is stored once."""
        self._open = ""
        try:
            if all_stored:
                with contextlib.suppress(OSError):  # else noted with a frame, as when more is left
                    os.ftruncate(self._fd, 0)
                    return
            self._write(frame(STORED, _batch_encoder.encode(_Batch(batch_id, count))))
        except InfrastructureError as exc:
            log.warning("a stored decision batch was not noted in the spool", batch_id=batch_id, error=str(exc))

    def close(self, *, all_stored: bool) -> None:
        """Release the file: removed if everything was stored, left for the next process otherwise."""
        if all_stored:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)


@dataclass(slots=True)
class Orphan:
    """The spool of a process of the same service that is gone, locked by us while we send what it holds."""

    source: str
    path: Path
    unsent: Unsent
    fd: int

    def done(self) -> None:
        """Everything it held is stored: empty it (for anyone who opened it meanwhile), remove it, unlock."""
        os.ftruncate(self.fd, 0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)

    def release(self) -> None:
        """Unlock it unsent (this process stops first): the next process to start sends it."""
        os.close(self.fd)

    def batches(self, batch_size: int, batch_bytes: int) -> list[tuple[str, list[bytes]]]:
        """What it holds, as batches to send: the one it was sending keeps its id; the others get an id made
        from their content, so a replay cut short and done again sends the same batches."""
        entries = self.unsent.entries
        out: list[tuple[str, list[bytes]]] = []
        if self.unsent.open is not None:
            out.append((self.unsent.open.id, entries[: self.unsent.open.n]))
            entries = entries[self.unsent.open.n :]
        while entries:
            batch = entries[: batch_count(entries, batch_size, batch_bytes)]
            out.append(("replay-" + hashlib.sha256(b"".join(batch)).hexdigest()[:32], batch))
            entries = entries[len(batch) :]
        return out


def batch_count(entries: Sequence[bytes], batch_size: int, batch_bytes: int) -> int:
    """How many of the oldest ``entries`` make the next batch (at least one)."""
    count = size = 0
    for entry in entries:
        if count and (count >= batch_size or size + len(entry) > batch_bytes):
            break
        count += 1
        size += len(entry)
    return count


def orphans(directory: Path, service: str) -> list[Orphan]:
    """The unlocked spools of ``service``'s processes in ``directory``, each now locked by us; empty ones are
    removed. One that cannot be read is logged and left in place."""
    found: list[Orphan] = []
    for path in sorted(directory.glob(f"{service}-*{SUFFIX}")):
        source = path.name.removesuffix(SUFFIX)
        if not _SOURCE_RE.match(source):
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # another process sent it and removed it
        if not _locked(fd):
            os.close(fd)  # a live process's spool
            continue
        try:
            with open(fd, "rb", closefd=False) as f:
                held = unsent(f.read())
        except (OSError, IntegrityError) as exc:
            log.error("decision spool not replayed; left for an operator", path=str(path), error=str(exc))
            os.close(fd)
            continue
        orphan = Orphan(source=source, path=path, unsent=held, fd=fd)
        if held.entries:
            found.append(orphan)
        else:
            orphan.done()
    return found
