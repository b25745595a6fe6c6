"""The one resource-capping rule (symbi_common.caps), used by lifecycle, scheduler and sandbox-agent alike."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from symbi_common.caps import CAPPED_RESOURCES, cap_limits, lower_to_caps, resource_caps
from symbi_common.decisions import Condition
from symbi_common.errors import ValidationError


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    """The shape of an agent's resource limits (as lifecycle and the scheduler hold them)."""

    memory_mb: int = 512
    cpu_cores: float = 1.0
    disk_io_mbps: int = 100
    network_io_mbps: int = 10
    execution_timeout_s: float = 300.0


class SandboxLimits(msgspec.Struct, frozen=True, kw_only=True):
    """A struct with limits that are not policy resources (as a sandbox's): those are never capped."""

    memory_mb: int = 512
    cpu_cores: float = 2.0
    pids: int = 256
    output_cap_bytes: int = 1024


def cap(policy: str = "p", **params: Any) -> Condition:
    return Condition(kind="cap_resources", params=params, policy=policy)


def test_the_tightest_cap_of_every_condition_wins_and_other_conditions_do_not_count() -> None:
    conditions = [
        cap(memory_mb=1024, cpu_cores=0.5),
        Condition(kind="log_full", policy="log"),
        cap(memory_mb=256, execution_timeout_s=60),
    ]
    assert resource_caps(conditions) == {"memory_mb": 256, "cpu_cores": 0.5, "execution_timeout_s": 60}
    capped = cap_limits(Resources(), conditions)
    assert capped == Resources(memory_mb=256, cpu_cores=0.5, execution_timeout_s=60.0)


def test_limits_are_only_lowered_and_keep_their_declared_types() -> None:
    capped = lower_to_caps(
        Resources(memory_mb=128, cpu_cores=2), {"memory_mb": 4096, "cpu_cores": 1, "disk_io_mbps": 7.9}
    )
    assert capped == Resources(memory_mb=128, cpu_cores=1.0, disk_io_mbps=7)
    assert type(capped.cpu_cores) is float
    assert type(capped.disk_io_mbps) is int
    unchanged = Resources()
    assert lower_to_caps(unchanged, {"memory_mb": 10_000}) is unchanged


def test_only_the_policy_resources_are_capped() -> None:
    limits = SandboxLimits()
    capped = lower_to_caps(limits, {"memory_mb": 64, "pids": 16, "output_cap_bytes": 1, "gpu": 0})
    assert capped == SandboxLimits(memory_mb=64)
    assert set(CAPPED_RESOURCES) == set(msgspec.structs.asdict(Resources()))


@pytest.mark.parametrize("bad", ["512", None, True, [1]])
def test_a_cap_that_is_not_a_number_is_refused(bad: Any) -> None:
    with pytest.raises(ValidationError, match=r"cap_resources\.memory_mb: must be a number"):
        lower_to_caps(Resources(), {"memory_mb": bad})


def _previous_rule(limits: Resources, conditions: list[Condition]) -> Resources:
    """How lifecycle capped an agent's configuration before the rule was shared (kept as the reference)."""
    values = msgspec.structs.asdict(limits)
    for condition in conditions:
        if condition.kind != "cap_resources":
            continue
        for key, c in condition.params.items():
            if key in values and isinstance(c, int | float):
                values[key] = type(values[key])(min(values[key], c))
    return Resources(**values)


numbers = st.one_of(st.integers(0, 100_000), st.floats(0, 100_000, allow_nan=False))
conditions = st.lists(
    st.dictionaries(st.sampled_from([*CAPPED_RESOURCES, "pids", "gpu"]), numbers, max_size=4).map(lambda p: cap(**p)),
    max_size=4,
)
limits = st.builds(
    Resources,
    memory_mb=st.integers(16, 65_536),
    cpu_cores=st.floats(0.1, 64),
    disk_io_mbps=st.integers(1, 10_000),
    network_io_mbps=st.integers(0, 10_000),
    execution_timeout_s=st.floats(1, 86_400),
)


@given(limits, conditions)
def test_the_shared_rule_gives_what_each_service_gave_before(before: Resources, conds: list[Condition]) -> None:
    after = cap_limits(before, conds)
    assert after == _previous_rule(before, conds)
    for name in CAPPED_RESOURCES:
        assert getattr(after, name) <= getattr(before, name)
