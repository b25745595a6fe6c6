"""The bus's ``[sandbox]`` settings the daemon refuses at start-up (``check_settings``)."""

from __future__ import annotations

import pytest
from symbi_common.errors import ConfigError
from symbi_common.settings_sandbox import SandboxSettings
from symbi_sandbox_agent.config import check_settings


@pytest.mark.parametrize("seconds", [0.0, 0.5, -1.0, 3601.0, float("nan"), float("inf")])
def test_an_inbox_ack_wait_out_of_range_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigError, match="must be in") as refused:
        check_settings(SandboxSettings(bus_ack_wait_s=seconds))
    assert refused.value.details["setting"] == "sandbox.bus_ack_wait_s"


@pytest.mark.parametrize("seconds", [1.0, 30.0, 3600.0])
def test_an_inbox_ack_wait_from_one_second_to_an_hour_is_taken(seconds: float) -> None:
    check_settings(SandboxSettings(bus_ack_wait_s=seconds))
