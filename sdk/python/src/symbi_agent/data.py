"""The agent's granted data: files under ``/symbi/data`` (docs/grants.md), through the gateway so each access
is decided by policy and audited. Paths are ``<root>/<dir>/<file>`` (or the same under ``/symbi/data/``).

A grant is also mounted into the sandbox, so plain file I/O works as well; these calls are for the accesses
that must be decided and recorded one by one (and for agents without a mount, e.g. in a test harness).
"""

from __future__ import annotations

import base64
from typing import Any

from symbi_agent.namespaces import _Area, _given

#: What one ``read`` returns or one ``write`` writes at most (the gateway answers ``too_large`` past it).
MAX_DATA_BYTES = 512 * 1024


class Data(_Area):
    """``data.read`` / ``data.list`` / ``data.write`` within the agent's filesystem grants."""

    def read(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        binary: bool = False,
        context: dict[str, Any] | None = None,
    ) -> Any:
        """Read a file (up to :data:`MAX_DATA_BYTES` from ``offset``); the result is ``{"path", "size",
        "offset", "length", "sha256", "encoding", "content"}`` — ``content`` is text, or base64 with
        ``binary=True`` (:func:`content_bytes` turns either into bytes)."""
        args = _given(path=path, offset=offset, length=length, encoding="base64" if binary else "utf-8")
        return self._call("data.read", args, context)

    def list(self, path: str, *, limit: int | None = None, context: dict[str, Any] | None = None) -> Any:
        """The entries of a granted directory: ``{"path", "entries": [{"name", "type", "size"?}], "truncated"}``."""
        return self._call("data.list", _given(path=path, limit=limit), context)

    def write(
        self, path: str, content: str | bytes, *, mode: str = "overwrite", context: dict[str, Any] | None = None
    ) -> Any:
        """Write a file under a ``read_write`` grant; ``mode`` is ``overwrite``, ``append`` or ``create``. The
        result is ``{"path", "written", "size", "sha256"}``; :class:`~symbi_agent.errors.ReadOnly` under a
        read-only grant."""
        if isinstance(content, bytes):
            args = {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64", "mode": mode}
        else:
            args = {"path": path, "content": content, "mode": mode}
        return self._call("data.write", args, context)


def content_bytes(result: dict[str, Any]) -> bytes:
    """The bytes of a ``read`` result, whichever encoding it was read with."""
    if result.get("encoding") == "base64":
        return base64.b64decode(result["content"])
    return str(result["content"]).encode()
