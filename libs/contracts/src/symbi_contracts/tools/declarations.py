"""MCP servers an agent definition declares (``AgentConfig.mcp_servers``) and the rules a declaration must
follow before anything runs. Pure.

A declaration is what ``symbi tools add`` takes: an image pinned by digest and its command (stdio, run in a
sandbox without network), or a streamable-HTTP URL; the SchemaPin domain its tools must be signed for; the
sandbox tier asked for (empty: the risk assessment's, never lower); the server's environment. The
sandbox-agent registers declared servers through the same registry as the operator's (docs/tools.md): the
same name with another configuration is refused, never merged, and every tool still needs an operator's
approval.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Literal

import msgspec

#: An image a server may run from: pinned by content, ``sha256:<id>`` or ``name@sha256:<digest>``.
PINNED_IMAGE = re.compile(r"(?:[^\s@]+@)?sha256:[0-9a-f]{64}")
#: A server's name: its tools are ``<server>.<tool>``, so it holds no dot.
SERVER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
TIERS = ("tier1", "tier2")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_SERVERS = 16


class McpServerSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One MCP server: ``image`` + ``command`` (stdio) or ``url`` (streamable HTTP)."""

    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    url: str = ""
    domain: str = ""
    #: The sandbox tier asked for; empty: the risk assessment's (it may raise the tier, never lower it).
    tier: str = ""
    env: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "http" if self.url else "stdio"


def declaration_problems(servers: Iterable[McpServerSpec]) -> list[tuple[str, str]]:
    """Every rule the declarations break, as ``(field, message)`` with ``field`` like ``[0].image``."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    servers = list(servers)
    if len(servers) > MAX_SERVERS:
        problems.append(("", f"at most {MAX_SERVERS} MCP servers, got {len(servers)}"))
    for i, s in enumerate(servers):
        at = f"[{i}]"
        if not SERVER_NAME.fullmatch(s.name):
            problems.append((f"{at}.name", f"{s.name!r} is not 1-32 of a-z 0-9 _ - (starting with a letter or digit)"))
        key = unicodedata.normalize("NFKC", s.name).casefold()
        if key in seen:
            problems.append((f"{at}.name", f"{s.name!r} is declared twice (or collides with {seen[key]!r})"))
        seen[key] = s.name
        if s.url and (s.image or s.command):
            problems.append((at, "a server is an image + command (stdio) or a url, not both"))
        elif s.url:
            if not s.url.startswith(("http://", "https://")):
                problems.append((f"{at}.url", f"{s.url!r} is not an http(s) URL"))
        else:
            if not PINNED_IMAGE.fullmatch(s.image):
                problems.append((f"{at}.image", f"{s.image!r} is not pinned by digest (sha256:… or name@sha256:…)"))
            if not s.command or not all(s.command):
                problems.append((f"{at}.command", "a stdio server needs a command"))
        if s.tier not in ("", *TIERS):
            problems.append((f"{at}.tier", f"{s.tier!r} is not one of {', '.join(TIERS)} (or empty: assessed)"))
        problems += [
            (f"{at}.env.{k}", f"{k!r} is not an environment variable name") for k in s.env if not ENV_NAME.fullmatch(k)
        ]
    return problems
