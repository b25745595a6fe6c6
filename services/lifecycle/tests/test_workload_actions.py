"""``Workload.actions``: the opt-in to the action gateway, decoded and validated like the rest of the config."""

from __future__ import annotations

import msgspec
import pytest
from symbi_common.errors import BadRequest
from symbi_contracts.lifecycle.config import AgentConfig, Workload
from symbi_lifecycle.config import convert_config, validate_config

BASE = {"name": "note-keeper", "workload": {"image": "symbi/busybox:1", "command": ["sh", "-c", "true"]}}


def test_actions_default_to_off() -> None:
    config = convert_config(BASE)
    assert config.workload is not None
    assert config.workload.actions is False
    assert validate_config(config) == []


def test_actions_true_is_kept_and_round_trips_through_json() -> None:
    raw = {**BASE, "workload": {**BASE["workload"], "actions": True}}  # type: ignore[dict-item]
    config = convert_config(raw)
    assert config.workload == Workload(image="symbi/busybox:1", command=("sh", "-c", "true"), actions=True)
    assert validate_config(config) == []
    again = msgspec.json.decode(msgspec.json.encode(config), type=AgentConfig)
    assert again.workload is not None
    assert again.workload.actions is True


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_a_non_boolean_actions_is_refused_naming_the_field(value: object) -> None:
    raw = {**BASE, "workload": {**BASE["workload"], "actions": value}}  # type: ignore[dict-item]
    with pytest.raises(BadRequest) as err:
        convert_config(raw)
    assert err.value.details["field"] == "config.workload.actions"


def test_an_unknown_workload_key_is_still_refused() -> None:
    raw = {**BASE, "workload": {**BASE["workload"], "action": True}}  # type: ignore[dict-item]
    with pytest.raises(BadRequest) as err:
        convert_config(raw)
    assert err.value.details["field"] == "config.workload.action"
