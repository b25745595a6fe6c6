"""Which addresses the proxy connects to: public unicast ones, and those a host setting allows. Pure.

Refused unless ``[egress] allow_addresses`` names them: loopback, private (RFC 1918, ULA ``fc00::/7``),
link-local (``169.254.0.0/16``, ``fe80::/10``), the cloud metadata addresses (``169.254.169.254``,
``fd00:ec2::254``), shared (CGNAT), multicast, reserved, unspecified, and any IPv6 address that embeds
an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo), which
is judged by the IPv4 address it carries, so a v6 spelling never skips a v4 rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """The networks the host setting allows despite the rules above (e.g. an air-gapped mirror)."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, cidrs: Iterable[str]) -> AddressPolicy:
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()))

    def explicitly_allowed(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.allowed)

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` is refused (``loopback``, ``metadata`` …), or None if the proxy may connect to it."""
        if self.explicitly_allowed(address):
            return None
        return classify(address)


def embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def classify(address: Address) -> str | None:
    """The kind of non-public address ``address`` is, or None for a public unicast one."""
    if address in METADATA:
        return "metadata"
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_v4(address)
        if inner is not None:
            kind = classify(inner)
            return f"{kind} (embedded in IPv6)" if kind else "ipv4_embedded"
        if address.scope_id:
            return "link_local"
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link_local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared", isinstance(address, ipaddress.IPv4Address) and address in _SHARED),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not_global", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)
