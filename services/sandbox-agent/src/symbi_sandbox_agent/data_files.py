"""The files behind ``data.read`` / ``data.list`` / ``data.write``: blocking I/O confined to one mount.

Every path is walked one component at a time from the mount's directory with ``O_NOFOLLOW`` (``openat``):
a symlink anywhere below the mount is refused (``denied``), whether it points inside the root or not, so no
path can lead out of what was granted, and a directory swapped for a symlink mid-walk is refused too.
FIFOs and devices are never opened for reading or writing (``O_NONBLOCK``, then a regular-file check).
A new file is owned by the sandbox's user (when the daemon runs as root), so the agent can change it
through its mount as well. Errors are :class:`DataFileError` with the protocol's code.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import os
import stat
from collections.abc import Iterator, Sequence
from typing import Any

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_MODES = {
    "overwrite": os.O_CREAT | os.O_TRUNC,
    "append": os.O_CREAT | os.O_APPEND,
    "create": os.O_CREAT | os.O_EXCL,
}


class DataFileError(Exception):
    """A data request that cannot be served; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shown(parts: Sequence[str]) -> str:
    return "/".join(parts) or "."


@contextlib.contextmanager
def _directory(source: str, parts: Sequence[str]) -> Iterator[int]:
    """A descriptor of the directory ``source/parts…``, reached without following any symlink."""
    try:
        fd = os.open(source, _DIR)
    except OSError as exc:
        raise DataFileError("not_found", f"the granted directory is gone: {exc.strerror}") from None
    try:
        for i, part in enumerate(parts):
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR and _is_symlink(part, fd):  # O_DIRECTORY|O_NOFOLLOW on a link
                    exc = OSError(errno.ELOOP, "a symlink")
                raise _walk_error(exc, parts[: i + 1]) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _walk_error(exc: OSError, parts: Sequence[str]) -> DataFileError:
    where = _shown(parts)
    if exc.errno == errno.ENOENT:
        return DataFileError("not_found", f"{where} does not exist")
    if exc.errno == errno.ELOOP:
        return DataFileError("denied", f"{where} is a symlink; the gateway does not follow symlinks")
    if exc.errno == errno.ENOTDIR:
        return DataFileError("not_found", f"{where} is not a directory")
    if exc.errno == errno.EEXIST:
        return DataFileError("exists", f"{where} exists already (mode 'create' writes only new files)")
    return DataFileError("denied", f"{where}: {exc.strerror}")


def _regular(fd: int, parts: Sequence[str]) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise DataFileError("invalid_request", f"{_shown(parts)} is {kind}")
    return st


def readable(source: str, parts: Sequence[str], offset: int, length: int | None, cap: int) -> int:
    """How many bytes a :func:`read` with these arguments may return, as the file is now: what is left from
    ``offset``, at most ``length`` (default: at most ``cap``); 0 for what cannot be read as a regular file
    (missing, a symlink, a directory …: the read itself then says why). Nothing is opened (a FIFO is only
    looked at)."""
    if not parts:
        return 0
    try:
        with _directory(source, parts[:-1]) as parent:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except (DataFileError, OSError):
        return 0
    if not stat.S_ISREG(st.st_mode):
        return 0
    return min(max(0, st.st_size - offset), cap if length is None else length)


def read(
    source: str, parts: Sequence[str], offset: int, length: int | None, cap: int, most: int | None = None
) -> tuple[bytes, int]:
    """``length`` bytes (default: to the end) of the file from ``offset``, and the file's size; never more
    than ``most`` bytes (what the decision was about: :func:`readable`, should the file have grown since)."""
    if not parts:
        raise DataFileError("invalid_request", "the path names a granted directory, not a file: use data.list")
    if offset < 0 or (length is not None and length < 0):
        raise DataFileError("invalid_request", "offset and length must not be negative")
    with _directory(source, parts[:-1]) as parent:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except OSError as exc:
            raise _walk_error(exc, parts) from None
    try:
        size = _regular(fd, parts).st_size
        want = max(0, size - offset) if length is None else length
        if want > cap:
            raise DataFileError(
                "too_large",
                f"{_shown(parts)} has {size} bytes; one data.read returns at most {cap}: read it in pieces "
                "with offset and length",
            )
        if most is not None:
            want = min(want, most)
        chunks, at = [], offset
        while want > 0 and (chunk := os.pread(fd, want, at)):
            chunks.append(chunk)
            at += len(chunk)
            want -= len(chunk)
        return b"".join(chunks), size
    finally:
        os.close(fd)


def listing(source: str, parts: Sequence[str], limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The first ``limit`` entries by name (name, type, size of files), and whether there were more.

    Memory stays bounded by ``limit`` however large the directory: only the ``limit + 1`` smallest names
    are kept while it is read, and only the ``limit`` shown are looked at. An entry gone by then is left out."""
    entries: list[dict[str, Any]] = []
    with _directory(source, parts) as fd:
        with os.scandir(fd) as found:
            names = heapq.nsmallest(limit + 1, (entry.name for entry in found))
        for name in names[:limit]:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = (
                "file"
                if stat.S_ISREG(st.st_mode)
                else "dir"
                if stat.S_ISDIR(st.st_mode)
                else "symlink"
                if stat.S_ISLNK(st.st_mode)
                else "other"
            )
            item: dict[str, Any] = {"name": name, "type": kind}
            if kind == "file":
                item["size"] = st.st_size
            entries.append(item)
    return entries, len(names) > limit


def write(source: str, parts: Sequence[str], data: bytes, mode: str, owner: tuple[int, int]) -> int:
    """Write ``data`` to the file (mode ``overwrite``, ``append`` or ``create``); the file's size after."""
    if not parts:
        raise DataFileError("invalid_request", "the path names a granted directory, not a file")
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | _WRITE_MODES[mode]
    with _directory(source, parts[:-1]) as parent:
        existed = _exists(parts[-1], parent)
        try:
            fd = os.open(parts[-1], flags, 0o644, dir_fd=parent)
        except OSError as exc:
            raise _walk_error(exc, parts) from None
    try:
        _regular(fd, parts)
        if not existed and os.geteuid() == 0:
            os.fchown(fd, *owner)  # the sandbox's user may change it through its mount too
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _is_symlink(name: str, parent: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _exists(name: str, parent: int) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
