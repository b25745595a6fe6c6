"""The one resource-capping rule: limits lowered to the ``cap_resources`` conditions of an allow. Pure.

A policy that permits with ``@cap_resources("memory_mb=512,cpu_cores=1")`` grants at most those
resources. Every service that honours the condition (the lifecycle service on an agent's configuration,
the scheduler on a task's limits, the sandbox-agent on a sandbox's) lowers its limits with
:func:`cap_limits` (or :func:`lower_to_caps`, given the caps already combined), so the rule is written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from symbi_common.decisions import Condition
from symbi_common.errors import ValidationError

#: The resources a ``cap_resources`` condition lowers: the policy schema's ``context.resources`` record.
CAPPED_RESOURCES = ("memory_mb", "cpu_cores", "disk_io_mbps", "network_io_mbps", "execution_timeout_s")

Limits = TypeVar("Limits", bound=msgspec.Struct)


def resource_caps(conditions: Sequence[Condition]) -> dict[str, int | float]:
    """The tightest cap per resource over every ``cap_resources`` condition."""
    caps: dict[str, int | float] = {}
    for c in conditions:
        if c.kind == "cap_resources":
            for key, value in c.params.items():
                caps[key] = min(caps[key], value) if key in caps else value
    return caps


def lower_to_caps(limits: Limits, caps: Mapping[str, Any]) -> Limits:
    """``limits`` with each of :data:`CAPPED_RESOURCES` it has lowered to its cap in ``caps``.

    A limit is only ever lowered, never raised; a lowered limit keeps its field's declared type (an
    ``int`` field is truncated: a cap of 511.5 MB gives 511). Caps on names that are not such limits of
    the struct are left alone. A cap that is not a number cannot be honoured: :class:`ValidationError`.
    """
    changes: dict[str, int | float] = {}
    for f in msgspec.structs.fields(limits):
        if f.name not in CAPPED_RESOURCES or f.name not in caps:
            continue
        cap = caps[f.name]
        if isinstance(cap, bool) or not isinstance(cap, int | float):
            raise ValidationError(f"must be a number, got {cap!r}", field=f"cap_resources.{f.name}")
        if cap < getattr(limits, f.name):
            changes[f.name] = int(cap) if f.type is int else float(cap)
    return msgspec.structs.replace(limits, **changes) if changes else limits


def cap_limits(limits: Limits, conditions: Sequence[Condition]) -> Limits:
    """``limits`` lowered to the tightest cap of every ``cap_resources`` condition (see :func:`lower_to_caps`)."""
    return lower_to_caps(limits, resource_caps(conditions))
