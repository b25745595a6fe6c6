"""The export file and stage 1 of its verification (parsing, signatures, leaves), in order, on several processes.

An export is JSON Lines, one stored event per line, in stream order::

    {"sequence": 17, "subject": "evt.agent.a1", "data": "<base64 of the exact stored bytes>"}

:func:`verdicts_of_file` turns each line into its :class:`~symbi_tlog.rules.Verdict`. On several processes
the work is cut into blocks of whole lines; a regular file is not sent to the workers at all — each worker
opens it itself and reads its blocks with ``pread``, the parent only finds where lines end (``mmap``) — and
each worker hands its verdicts back MessagePack-encoded, with the number of lines it read, so the parent
can number a bad line exactly. Any other stream (a pipe, a buffer) is read by the parent and sent in blocks.
"""

from __future__ import annotations

import gc
import mmap
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import BinaryIO

import msgspec
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_document import RegistryDocument
from symbi_common.streams import RawMessage

from symbi_tlog.errors import ExportMalformed
from symbi_tlog.rules import CachedRegistry, Verdict, verdict


class ExportLine(msgspec.Struct, frozen=True):
    sequence: int
    subject: str
    data: bytes
    """The exact stored bytes; base64 (standard alphabet, padded) in the file."""


_line_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(ExportLine)


def export_line(message: RawMessage) -> bytes:
    """One line of an export (with its newline)."""
    return _line_encoder.encode(ExportLine(message.sequence, message.subject, message.data)) + b"\n"


def read_export(lines: Iterable[bytes], first_line: int = 1) -> Iterator[RawMessage]:
    """The stored events of an export, in file order; :class:`ExportMalformed` names a bad line."""
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        try:
            item = _line_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ExportMalformed(
                f"line {number} of the export is not an exported event: {exc}", line=number, problem=str(exc)
            ) from None
        yield RawMessage(item.subject, item.sequence, item.data, {})


def verdicts_of_block(block: bytes, registry: KeyRegistry, first_line: int = 1) -> list[Verdict]:
    """Stage 1 of every line of ``block`` (whole lines of an export).

    The block is decoded in one call (``decode_lines``, no per-line split and loop in Python); only a
    block that fails to decode is read again line by line, so that :class:`ExportMalformed` names the line.
    """
    try:
        items = _line_decoder.decode_lines(block)
    except (msgspec.DecodeError, msgspec.ValidationError):
        items = None
    if items is None:
        return [verdict(m, registry) for m in read_export(block.split(b"\n"), first_line)]
    return [verdict(item, registry) for item in items]


def _lines_in(block: bytes) -> int:
    return block.count(b"\n") + (1 if block and not block.endswith(b"\n") else 0)


# --- the workers -------------------------------------------------------------------------------------

_worker_registry: CachedRegistry | None = None
_worker_fd: int | None = None
_verdicts_encoder = msgspec.msgpack.Encoder()
_verdicts_decoder = msgspec.msgpack.Decoder(list[Verdict])

Outcome = tuple[int, bytes, str]
"""A worker's answer for one block: (lines read, MessagePack of the verdicts, "") or (bad line within the
block, b"", what is wrong with it)."""


def _init_worker(document: bytes, path: str | None) -> None:
    global _worker_registry, _worker_fd
    # A forked worker inherits the parent's heap: keep the garbage collector from walking (and so copying) it.
    gc.freeze()
    _worker_registry = CachedRegistry(KeyRegistry(msgspec.json.decode(document, type=RegistryDocument)))
    _worker_fd = os.open(path, os.O_RDONLY) if path is not None else None


def _outcome(block: bytes) -> Outcome:
    assert _worker_registry is not None, "the pool initializer loads the registry"
    try:
        return _lines_in(block), _verdicts_encoder.encode(verdicts_of_block(block, _worker_registry)), ""
    except ExportMalformed as err:
        return int(err.details["line"]), b"", str(err.details["problem"])


def _block_of_bytes(block: bytes) -> Outcome:
    return _outcome(block)


def _block_of_file(start: int, end: int) -> Outcome:
    assert _worker_fd is not None, "the pool initializer opens the file"
    parts: list[bytes] = []
    while start < end:
        part = os.pread(_worker_fd, end - start, start)
        if not part:
            raise ExportMalformed("the export file became shorter while it was being verified")
        parts.append(part)
        start += len(part)
    return _outcome(b"".join(parts))


# --- the parent ----------------------------------------------------------------------------------------


def _blocks(fh: BinaryIO, size: int) -> Iterator[bytes]:
    """The stream in blocks of whole lines (about ``size`` bytes each)."""
    rest = b""
    while True:
        data = fh.read(size)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        yield data[:cut]
        rest = data[cut:]
    if rest:
        yield rest


def _ranges(view: mmap.mmap, size: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` byte ranges of whole lines (about ``size`` bytes each) of a mapped file."""
    start, total = 0, len(view)
    while start < total:
        end = min(start + size, total)
        if end < total:
            cut = view.rfind(b"\n", start, end)
            if cut < 0:  # a line longer than a block
                cut = view.find(b"\n", end)
            end = total if cut < 0 else cut + 1
        yield start, end
        start = end


def _regular_path(fh: BinaryIO) -> str | None:
    """The path of ``fh`` if it is a regular file the workers can open themselves."""
    name = getattr(fh, "name", None)
    try:
        return name if isinstance(name, str) and stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else None
    except (OSError, ValueError, AttributeError):  # no file descriptor (a buffer)
        return None


def _in_order(pending: Iterator[Callable[[], Outcome]]) -> Iterator[Verdict]:
    line = 1
    for result in pending:
        lines, encoded, problem = result()
        if problem:
            bad = line + lines - 1
            raise ExportMalformed(f"line {bad} of the export is not an exported event: {problem}", line=bad)
        yield from _verdicts_decoder.decode(encoded)
        line += lines


def verdicts_of_file(
    fh: BinaryIO, registry: KeyRegistry, *, workers: int = 1, block: int = 128 * 1024
) -> Iterator[Verdict]:
    """Stage 1 of every line of an export file, in order; parsing and signatures on ``workers`` processes.

    The registry was verified against the pinned root already; the workers get its document.
    """
    if workers <= 1:
        cached = CachedRegistry(registry)
        first = 1
        for part in _blocks(fh, block):
            yield from verdicts_of_block(part, cached, first)
            first += _lines_in(part)
        return
    document = msgspec.json.encode(registry.document)
    path = _regular_path(fh)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(document, path)) as pool:
        if path is not None:
            if os.fstat(fh.fileno()).st_size == 0:
                return
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
                jobs: Iterator[Future[Outcome]] = (pool.submit(_block_of_file, s, e) for s, e in _ranges(view, block))
                yield from _in_order(_ahead(jobs, workers * 2))
        else:
            jobs = (pool.submit(_block_of_bytes, part) for part in _blocks(fh, block))
            yield from _in_order(_ahead(jobs, workers * 2))


def _ahead(jobs: Iterator[Future[Outcome]], depth: int) -> Iterator[Callable[[], Outcome]]:
    """The jobs' results in order, keeping ``depth`` more submitted while the caller works on one."""
    pending: deque[Future[Outcome]] = deque()
    for job in jobs:
        pending.append(job)
        if len(pending) > depth:
            yield pending.popleft().result
    while pending:
        yield pending.popleft().result
