"""Tool names namespaced by server (``server.tool``) and the collisions refused. Pure.

A server name has no dot, so ``server.tool`` splits at its first dot and no two servers can produce the same
qualified name. What remains are names that *look* the same: two names equal after Unicode NFKC and case
folding (``Read_File`` and ``read_file``, a fullwidth letter for a latin one) within one server, or a server
name that folds onto a registered one. Those are refused, not resolved, so a model never sees two tools it
cannot tell apart.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from symbi_common.errors import BadRequest

SERVER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
#: What MCP allows in a tool name (2025-06 spec: 1-128 of these).
TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,128}")


class NameRefused(BadRequest, ValueError):
    """A server or tool name that is malformed or collides with another."""


def folded(name: str) -> str:
    """The form two names are compared in: NFKC, case-folded."""
    return unicodedata.normalize("NFKC", name).casefold()


def qualified(server: str, tool: str) -> str:
    return f"{server}.{tool}"


def split(name: str) -> tuple[str, str]:
    """``server.tool`` -> (server, tool); raises :class:`NameRefused` for a name without a server or with one
    that is no server name (``*`` or ``>`` would read every server's events as one)."""
    server, dot, tool = name.partition(".")
    if not dot or not server or not tool:
        raise NameRefused(f"a tool is named server.tool, got {name[:140]!r}")
    check_server_name(server, ())
    return server, tool


def check_server_name(server: str, registered: Iterable[str]) -> None:
    """Refuse a malformed server name or one that folds onto a registered server."""
    if not SERVER_NAME.fullmatch(server):
        raise NameRefused(
            f"a server name is 1-32 of a-z 0-9 _ - (starting with a letter or digit), got {server[:80]!r}"
        )
    for other in registered:
        if other != server and folded(other) == folded(server):
            raise NameRefused(f"server name {server!r} collides with registered server {other!r}")


def check_tool_names(server: str, names: Iterable[str]) -> list[str]:
    """The names a server listed, refused (:class:`NameRefused`) if any is malformed, listed twice or folds
    onto another of the same server's names."""
    seen: dict[str, str] = {}
    out = []
    for name in names:
        if not TOOL_NAME.fullmatch(name):
            raise NameRefused(f"server {server!r} lists a tool named {name[:140]!r}: not 1-128 of A-Z a-z 0-9 _ . - /")
        key = folded(name)
        if key in seen:
            raise NameRefused(
                f"server {server!r} lists tools {seen[key]!r} and {name!r}, which collide "
                f"({qualified(server, name)!r} cannot be told apart)"
            )
        seen[key] = name
        out.append(name)
    return out
