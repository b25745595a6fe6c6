"""The sandbox tier of a tool server, assessed from what it is given and what is known of it. Pure.

A server starts at ``tier1`` (runc); each risk factor below puts it in ``tier2`` (gVisor). The operator may
ask for a higher tier than the assessment, never a lower one: that is refused with the factors that set it.

| factor | why it raises the tier |
|---|---|
| ``network_granted`` | the server can reach beyond its sandbox (none is granted yet: ``--network none``) |
| ``secrets_passed:<VAR>`` | an environment variable that looks like a credential (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSW*``, ``*CREDENTIAL*``, ``*AUTH*``) or a ``vault://`` reference: a server that escapes its sandbox takes it along |
| ``image_not_pinned`` | the code that runs can change under the same name (such a stdio registration is refused anyway) |
| ``no_schemapin_domain`` | nobody vouches for its tool definitions |
| ``flagged_tools:<server.tool>`` | it listed a definition with poisoning signs (known only once it has run: the tier is raised then) |
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from symbi_contracts.tools.declarations import PINNED_IMAGE
from symbi_contracts.tools.errors import ToolTierRefused

Tier = Literal["tier1", "tier2"]
TIERS: tuple[Tier, ...] = ("tier1", "tier2")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
VAULT_REF = "vault://"


@dataclass(frozen=True, slots=True)
class Assessment:
    """The tier a server needs at least, and the factors that set it (none: ``tier1``)."""

    tier: Tier
    factors: tuple[str, ...]


def secrets_in(env: Mapping[str, str]) -> list[str]:
    """The variables of ``env`` that look like credentials or reference a secret."""
    return sorted(k for k, v in env.items() if SECRET_NAME.search(k) or v.startswith(VAULT_REF))


def assess(
    *,
    transport: str,
    image: str = "",
    domain: str = "",
    env: Mapping[str, str] | None = None,
    network: bool = False,
    flagged: Iterable[str] = (),
) -> Assessment:
    """The least tier for a server with this registration (``flagged``: its tools that carry flags)."""
    factors = []
    if network:
        factors.append("network_granted")
    factors += [f"secrets_passed:{name}" for name in secrets_in(env or {})]
    if transport == "stdio" and not PINNED_IMAGE.fullmatch(image):
        factors.append("image_not_pinned")
    if not domain:
        factors.append("no_schemapin_domain")
    factors += [f"flagged_tools:{name}" for name in sorted(set(flagged))]
    return Assessment("tier2" if factors else "tier1", tuple(factors))


def chosen_tier(requested: str, assessment: Assessment, server: str = "") -> Tier:
    """The tier a server runs in: ``requested`` if it is at least the assessment's, the assessment's when
    ``requested`` is empty; a lower one is refused with :class:`ToolTierRefused`."""
    if not requested:
        return assessment.tier
    if requested not in TIERS:
        raise ToolTierRefused(
            f"server {server!r}: no tier {requested!r} (one of {', '.join(TIERS)})",
            requested=requested,
            assessed=assessment.tier,
            factors=list(assessment.factors),
        )
    if TIERS.index(requested) < TIERS.index(assessment.tier):
        raise ToolTierRefused(
            f"server {server!r} needs at least {assessment.tier} ({', '.join(assessment.factors)}); "
            f"{requested} is lower: leave --tier out or ask for {assessment.tier}",
            requested=requested,
            assessed=assessment.tier,
            factors=list(assessment.factors),
        )
    return requested


def raised(current: str, flagged: Iterable[str]) -> Assessment | None:
    """The tier a running server must be moved to now that ``flagged`` tools were seen, or None if it is in
    that tier already (or nothing is flagged)."""
    names = sorted(set(flagged))
    if not names or current == "tier2":
        return None
    return Assessment("tier2", tuple(f"flagged_tools:{name}" for name in names))
