"""The allow-list of one agent (its definition's ``network_access``) and the refusals of the proxy. Pure.

An entry is ``api.example.com`` (that name exactly), ``*.example.com`` (any name below it, not the bare
``example.com``), each with an optional ``:port``; without a port an entry allows 443 and 80. Names
compare case-insensitively, with a trailing dot removed. An IP literal entry (``203.0.113.7:443``,
``[2001:db8::1]:443``) allows only that literal, and only where the host setting ``[egress]
allow_addresses`` allows its address too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: Ports an entry without ``:port`` allows.
DEFAULT_PORTS = frozenset({80, 443})

#: The reason codes of a refused connection (the ``X-Symbi-Egress-Refused`` header of a 403, the audit event).
REASONS = (
    "not_allowed",  # no entry of the allow-list matches the name and port
    "policy_denied",  # Cedar denied network.connect
    "policy_undecided",  # no decision could be had
    "ip_literal",  # an IP literal target, not allowed by the host setting
    "blocked_address",  # the name resolves to a private, loopback, link-local, metadata … address
    "unresolved",  # the name does not resolve
    "sni_mismatch",  # the TLS ClientHello names another server than the CONNECT
    "not_tls",  # a CONNECT tunnel whose first bytes are not a TLS ClientHello with a server name
    "host_mismatch",  # a plain-HTTP request whose Host header names another server than its URL
    "bad_request",  # not HTTP, or a form the proxy does not serve
    "bandwidth_zero",  # the agent's network IO limit is 0
    "upstream_failed",  # the allowed address did not answer
)


class BadTarget(ValueError):
    """A host or ``host:port`` that cannot be a target (empty, bad port, bad characters)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a connection goes: a lower-cased name (or IP literal text) and a port."""

    host: str
    port: int

    @property
    def literal(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return ip_literal(self.host)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def normalise_host(host: str) -> str:
    """``host`` lower-cased, brackets and one trailing dot removed; :class:`BadTarget` if it cannot be one."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.removesuffix(".")
    if not h or len(h) > 253:
        raise BadTarget(f"{host[:80]!r} is not a host name")
    if ip_literal(h) is not None:
        return str(ip_literal(h))
    if any(not (c.isascii() and (c.isalnum() or c in "-.*_")) for c in h) or ".." in h:  # IDNA: xn--…
        raise BadTarget(f"{host[:80]!r} is not a host name")
    return h


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells (``1.2.3.4``, ``::1``, ``[::1]``, ``::ffff:1.2.3.4``), else None."""
    h = host.strip("[]").split("%", 1)[0]
    if ":" not in h and not h.replace(".", "").isdigit():
        return None  # a name: no need to let ipaddress fail on it (slow)
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        return None


def parse_authority(authority: str, default_port: int | None = None) -> Target:
    """``host:port`` / ``[v6]:port`` (or a bare host with ``default_port``) as a :class:`Target`."""
    a = authority.strip()
    if a.startswith("["):
        host, sep, rest = a[1:].partition("]")
        if not sep:
            raise BadTarget(f"{authority[:80]!r}: an IPv6 literal needs its closing bracket")
        port_text = rest.removeprefix(":") if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise BadTarget(f"{authority[:80]!r} is not host:port")
    elif a.count(":") == 1:
        host, _, port_text = a.partition(":")
    elif a.count(":") > 1:
        # ``CONNECT ::1:443``, as some clients (Python's http.client before 3.12) send it: with a port required
        # the last field is the port; without one, an unbracketed IPv6 literal is ambiguous.
        host, _, port_text = a.rpartition(":")
        if default_port is not None or ip_literal(host) is None:
            raise BadTarget(f"{authority[:80]!r}: write an IPv6 literal in brackets, [addr]:port")
    else:
        host, port_text = a, ""
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise BadTarget(f"{authority[:80]!r}: the port must be 1-65535")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise BadTarget(f"{authority[:80]!r} names no port")
    return Target(normalise_host(host), port)


@dataclass(frozen=True, slots=True)
class Entry:
    """One allow-list entry: ``pattern`` is a name, ``*.suffix`` or an IP literal; ``ports`` the ports."""

    pattern: str
    ports: frozenset[int]

    def matches(self, target: Target) -> bool:
        if target.port not in self.ports:
            return False
        if self.pattern.startswith("*."):
            suffix = self.pattern[1:]  # ".example.com"
            return target.host.endswith(suffix) and len(target.host) > len(suffix) and target.literal is None
        return target.host == self.pattern


def parse_entry(text: str) -> Entry:
    """One ``network_access`` entry; :class:`BadTarget` for one that is not ``name``, ``*.name`` or IP."""
    t = text.strip()
    if t in ("*", "0.0.0.0/0", "::/0") or "/" in t:
        raise BadTarget(f"{text!r}: allow-list entries are names (api.example.com, *.example.com), not {t!r}")
    try:
        target = parse_authority(t)
        ports = frozenset({target.port})
    except BadTarget:
        target = Target(normalise_host(t), 0)
        ports = DEFAULT_PORTS
    pattern = target.host
    if "*" in pattern and (not pattern.startswith("*.") or "*" in pattern[2:] or pattern.count(".") < 2):
        raise BadTarget(f"{text!r}: a wildcard is only '*.' before a name with at least two labels")
    return Entry(pattern, ports)


@dataclass(frozen=True, slots=True)
class AllowList:
    entries: tuple[Entry, ...]

    @classmethod
    def parse(cls, entries: tuple[str, ...] | list[str]) -> AllowList:
        return cls(tuple(parse_entry(e) for e in entries if e.strip()))

    def match(self, target: Target) -> Entry | None:
        """The first entry allowing ``target``, or None."""
        return next((e for e in self.entries if e.matches(target)), None)
