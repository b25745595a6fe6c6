"""An agent's ``with`` blocks: sandbox tier, timeout, memory, CPU, I/O rates and the body's step budget, compiled
to ``AgentConfig.security_tier`` and ``AgentConfig.resources``; Symbiont's spellings are read, its settings that
Symbi has no counterpart for are named as not honoured.
"""

from __future__ import annotations

import math
import re
from typing import Any

from symbi_contracts.lifecycle.config import CPU_CORES, DISK_IO_MBPS, EXECUTION_TIMEOUT_S, MEMORY_MB, NETWORK_IO_MBPS

from symbi_dsl import ast as A
from symbi_dsl.body import STEPS_BOUNDS
from symbi_dsl.diagnostics import Reporter
from symbi_dsl.literals import quantity
from symbi_dsl.values import Values, did_you_mean, key_span, value_of

TIERS = {"tier1": "tier1", "tier2": "tier2", "auto": "auto", "docker": "tier1", "runc": "tier1", "gvisor": "tier2"}
#: Sandboxes Symbiont knows that Symbi does not have.
OTHER_TIERS = ("tier3", "firecracker", "e2b")
_QUANTITY_RE = re.compile(r"^\d+(\.\d+)?\.?(ms|s|m|h|d|w|milliseconds?|seconds?|minutes?|hours?|days?|weeks?)\Z")
WITH_KEYS = ("sandbox", "timeout", "memory", "cpu", "disk_io", "network_io", "steps")
#: Symbiont's spellings of ours.
WITH_ALIASES = {"max_memory_mb": "memory", "max_cpu_cores": "cpu"}
#: Settings Symbiont's agents use that Symbi has no counterpart for (named as not honoured, never a typo).
SYMBIONT_SETTINGS = ("privacy", "security", "network_policy", "coordination", "requires", "encryption")


def with_settings(rep: Reporter, v: Values, agent: A.Agent, config: dict[str, Any]) -> None:
    """Read the agent's ``with`` blocks into ``config`` (``security_tier``, ``resources``)."""
    resources: dict[str, Any] = {}
    seen: dict[str, A.Entry] = {}
    for block in (i for i in agent.items if isinstance(i, A.With)):
        for entry in block.settings:
            key = WITH_ALIASES.get(entry.key, entry.key)
            if key not in WITH_KEYS:
                close = "" if entry.key in SYMBIONT_SETTINGS else did_you_mean(entry.key, WITH_KEYS)
                if close:  # a near miss of ours is a typo
                    rep.error("unknown_key", f"unknown setting {entry.key!r} in with", key_span(entry), close)
                else:  # Symbiont reads any setting: one Symbi lacks is named, not dropped silently
                    message = f"the setting {entry.key!r} is not honoured by Symbi"
                    rep.warn("unsupported", message, key_span(entry), f"known: {', '.join(WITH_KEYS)}")
                continue
            if key == "memory" and _word(value_of(entry)) is not None:
                _memory_mode(rep, value_of(entry))
                continue
            if key in seen:
                first = seen[key].span.line
                rep.warn("duplicate", f"{key!r} is set twice (first on line {first}, which counts)", key_span(entry))
                continue
            seen[key] = entry
            value = value_of(entry)
            if key == "memory" and entry.key in WITH_ALIASES and isinstance(value, A.Literal_):
                value = _megabytes(value)
            match key:
                case "sandbox":
                    _sandbox(rep, v, value, config)
                case "timeout":
                    resources["execution_timeout_s"] = v.duration(_lenient_duration(rep, value), EXECUTION_TIMEOUT_S)
                case "memory":
                    resources["memory_mb"] = _memory_mb(rep, v, value)
                case "cpu":
                    resources["cpu_cores"] = v.number(value, CPU_CORES, "cores")
                case "disk_io":
                    n = v.number(value, DISK_IO_MBPS, "MB/s")
                    resources["disk_io_mbps"] = int(n) if n is not None else None
                case "network_io":
                    n = v.number(value, NETWORK_IO_MBPS, "MB/s")
                    resources["network_io_mbps"] = int(n) if n is not None else None
                case "steps":  # the body's step budget (symbi_dsl.body reads it when it runs)
                    if isinstance(value, A.Literal_) and value.kind == "float":
                        v._bad(value, "a whole number of steps")
                    else:
                        v.number(value, STEPS_BOUNDS, "steps")
    resources = {k: val for k, val in resources.items() if val is not None}
    if resources:
        config["resources"] = resources


def _megabytes(value: A.Literal_) -> A.Expr:
    """Symbiont's ``max_memory_mb = 512``: a number of megabytes, as the size it stands for (any number: ``1e20``
    too, which is then out of range)."""
    if value.kind not in ("int", "float"):
        return value
    amount = float(value.value)  # type: ignore[arg-type]
    return A.Quantity(f"{value.value}MB", "size", amount * 1_000_000, span=value.span)


def _memory_mb(rep: Reporter, v: Values, value: A.Expr) -> int | None:
    """The memory size as ``AgentConfig.resources.memory_mb``: megabytes, or mebibytes for a binary unit (``GiB``);
    the number, not the bytes, is what must lie in ``MEMORY_MB`` (16MB and 16MiB are both the least)."""
    size = v.size(value, (0.0, math.inf))
    if size is None or not isinstance(value, A.Quantity):
        return None
    binary = "i" in value.text
    mb = size / (2**20 if binary else 1_000_000)
    lo, hi = MEMORY_MB
    if not lo <= mb <= hi:
        unit = "MiB" if binary else "MB"
        rep.error("range", f"{value.text} is out of range: must be between {lo}{unit} and {hi}{unit}", value.span)
        return None
    return round(mb)


def _memory_mode(rep: Reporter, value: A.Expr) -> None:
    """Symbiont's ``memory = "ephemeral" | "persistent" | …``: a mode, not a size."""
    word = _word(value)
    if word == "ephemeral":
        rep.warn("value", "sandbox memory is ephemeral anyway; write a size like 512MB", value.span)
        return
    hint = "declare a memory block and name it with memory = … in the agent"
    rep.warn("unsupported", f"memory = {word!r} is not honoured by Symbi", value.span, hint)


def _sandbox(rep: Reporter, v: Values, value: A.Expr, config: dict[str, Any]) -> None:
    word = _word(value)
    if word is not None and word.lower() in OTHER_TIERS:
        tiers = ", ".join(TIERS)
        rep.warn("unsupported", f"Symbi has no {word} sandbox", value.span, f"one of {tiers}")
        return
    if word is not None and word not in TIERS and word.lower() in TIERS:
        rep.warn("value", f"write the sandbox as {word.lower()}", value.span)
        word = word.lower()
        value = A.Name(word, span=value.span)
    tier = v.word(value, tuple(TIERS), "sandbox")
    if tier is not None:
        config["security_tier"] = TIERS[tier]


def _lenient_duration(rep: Reporter, value: A.Expr) -> A.Expr:
    """Symbiont's timeouts: ``"30s"`` as a string, or a number of milliseconds (warned, then read)."""
    if isinstance(value, A.Literal_) and value.kind == "string" and _QUANTITY_RE.match(str(value.value)):
        rep.warn("type", "write the duration without quotes", value.span, str(value.value))
        return _at(quantity(str(value.value)), value.span)
    if isinstance(value, A.Literal_) and value.kind == "int":
        rep.warn("type", f"a bare number is read as milliseconds: {value.value}ms", value.span, "write 30s, 5m …")
        return _at(quantity(f"{value.value}ms"), value.span)
    return value


def _at(q: A.Quantity, span: A.Span) -> A.Quantity:
    return A.Quantity(q.text, q.kind, q.value, span=span)


def _word(value: A.Expr) -> str | None:
    if isinstance(value, A.Name):
        return value.id
    return str(value.value) if isinstance(value, A.Literal_) and value.kind == "string" else None
