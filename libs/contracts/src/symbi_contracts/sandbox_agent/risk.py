"""Risk assessment: which sandbox tier a task runs in. Pure (no I/O), shared with the scheduler.

Five factors, each a number in [0, 1] where higher means riskier — except ``code_trust``, where
higher means *more* trusted (it enters the score as ``1 - code_trust``):

========================  =======  ==========================================================
factor                    weight   meaning
========================  =======  ==========================================================
``data_sensitivity``      0.30     how sensitive the task's input data is (public 0 … secret 1)
``code_trust``            0.25     trust in the code's source (unknown 0 … verified/signed 1)
``network_access``        0.20     none 0, an allow-list 0.5, anything (``*``) 1
``filesystem_access``     0.10     none 0, read-only paths 0.3, writable paths 0.7, writable ``/`` 1
``external_integrations`` 0.15     external APIs the agent calls (0.25 each, at most 1)
========================  =======  ==========================================================

The score is the weighted mean of the known factors; ``score < 0.5`` → Tier 1 (runc), else Tier 2
(gVisor). An unknown factor (``None``) cannot be assumed harmless, so when any factor is unknown
the configured default tier (``[security] default_sandbox_tier``) applies unless the known factors
alone already call for Tier 2. A definition that forces a tier (``security_tier``) wins over the
score; the score is still computed and recorded.

Usage (the scheduler, at assignment time)::

    factors = factors_for_agent(network_access=cfg.network_access, filesystem_access=paths,
                                external_apis=cfg.external_apis, data_sensitivity="internal",
                                code_trust=None)
    a = assess(factors, forced=cfg.security_tier, default_tier=settings.security.default_sandbox_tier)
    a.tier, a.score, a.factors  # "tier2", 0.61, {"network_access": 0.5, …}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from symbi_contracts.sandbox_agent.errors import InvalidWorkload

Tier = Literal["tier1", "tier2"]

THRESHOLD = 0.5

WEIGHTS: Mapping[str, float] = {
    "data_sensitivity": 0.30,
    "code_trust": 0.25,
    "network_access": 0.20,
    "filesystem_access": 0.10,
    "external_integrations": 0.15,
}

#: Names accepted for a tier: the contract's, the settings' (``docker``/``gvisor``) and the runtimes'.
_TIER_NAMES: Mapping[str, Tier] = {
    "tier1": "tier1",
    "docker": "tier1",
    "runc": "tier1",
    "tier2": "tier2",
    "gvisor": "tier2",
    "runsc": "tier2",
}

#: Sensitivity labels a definition or request may use instead of a number.
SENSITIVITY_LABELS: Mapping[str, float] = {"public": 0.0, "internal": 0.3, "confidential": 0.7, "secret": 1.0}
#: Trust labels for the code's source.
TRUST_LABELS: Mapping[str, float] = {
    "untrusted": 0.0,
    "unknown": 0.0,
    "community": 0.4,
    "internal": 0.7,
    "verified": 1.0,
}


class RiskFactors(msgspec.Struct, frozen=True, kw_only=True):
    """The inputs of an assessment; ``None`` means unknown."""

    data_sensitivity: float | None = None
    code_trust: float | None = None
    network_access: float | None = None
    filesystem_access: float | None = None
    external_integrations: float | None = None


class RiskAssessment(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome, as recorded in the task's events: score, chosen tier and why."""

    score: float
    tier: Tier
    factors: dict[str, float]
    unknown: tuple[str, ...] = ()
    reason: str = ""


def parse_tier(name: str) -> Tier | None:
    """``tier1``/``docker``/``runc`` → ``tier1``, ``tier2``/``gvisor``/``runsc`` → ``tier2``, ``auto``/"" → None."""
    key = name.strip().lower()
    if key in ("", "auto"):
        return None
    tier = _TIER_NAMES.get(key)
    if tier is None:
        raise InvalidWorkload(f"unknown sandbox tier {name!r}; use auto, tier1 (docker/runc) or tier2 (gvisor/runsc)")
    return tier


def _check(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not 0.0 <= value <= 1.0:
        raise InvalidWorkload(f"risk factor {name} is {value}; factors are numbers from 0 to 1")
    return float(value)


def assess(factors: RiskFactors, *, forced: str = "auto", default_tier: str = "gvisor") -> RiskAssessment:
    """Score ``factors`` and choose the tier (see the module docstring for the rule)."""
    known: dict[str, float] = {}
    unknown: list[str] = []
    for name in WEIGHTS:
        value = _check(name, getattr(factors, name))
        if value is None:
            unknown.append(name)
        else:
            known[name] = value
    weight = sum(WEIGHTS[n] for n in known)
    risk = {n: (1.0 - v if n == "code_trust" else v) for n, v in known.items()}
    score = round(sum(WEIGHTS[n] * risk[n] for n in known) / weight, 4) if weight else 0.0
    by_score: Tier = "tier1" if score < THRESHOLD else "tier2"
    default = parse_tier(default_tier) or "tier2"
    forced_tier = parse_tier(forced)
    if forced_tier is not None:
        tier, reason = forced_tier, f"the definition forces {forced_tier}"
    elif not known:
        tier, reason = default, f"no factor is known: default tier {default}"
    elif unknown and by_score == "tier1" and default == "tier2":
        tier, reason = "tier2", f"score {score} < {THRESHOLD} but {', '.join(unknown)} unknown: default tier tier2"
    else:
        tier = by_score
        reason = f"score {score} {'<' if tier == 'tier1' else '>='} {THRESHOLD}"
    return RiskAssessment(score=score, tier=tier, factors=known, unknown=tuple(unknown), reason=reason)


def _label(value: str | float | None, labels: Mapping[str, float], name: str) -> float | None:
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    level = labels.get(value.strip().lower())
    if level is None:
        raise InvalidWorkload(f"unknown {name} {value!r}; use a number from 0 to 1 or one of {', '.join(labels)}")
    return level


def factors_for_agent(
    *,
    network_access: Iterable[str] = (),
    filesystem_access: Iterable[tuple[str, str]] = (),
    external_apis: Iterable[str] = (),
    data_sensitivity: str | float | None = None,
    code_trust: str | float | None = None,
) -> RiskFactors:
    """Factors from an agent definition: its network allow-list, ``(path, mode)`` filesystem grants
    (mode ``read``/``write``/``read-write``), external API base URLs, and the sensitivity and trust
    labels (or numbers) when known. The definition-derived factors are always known."""
    hosts = [h.strip() for h in network_access if h.strip()]
    network = 0.0 if not hosts else (1.0 if any(h in ("*", "0.0.0.0/0") for h in hosts) else 0.5)
    filesystem = 0.0
    for path, mode in filesystem_access:
        writable = "write" in mode.lower()
        level = (1.0 if path.rstrip("/") == "" else 0.7) if writable else 0.3
        filesystem = max(filesystem, level)
    external = min(1.0, 0.25 * len([a for a in external_apis if a.strip()]))
    return RiskFactors(
        data_sensitivity=_label(data_sensitivity, SENSITIVITY_LABELS, "data sensitivity"),
        code_trust=_label(code_trust, TRUST_LABELS, "code trust"),
        network_access=network,
        filesystem_access=filesystem,
        external_integrations=external,
    )
