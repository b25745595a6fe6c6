"""Decoding request bodies into contract types: a refused body names the offending field."""

from __future__ import annotations

import pytest
from symbi_common.errors import BadRequest
from symbi_contracts.lifecycle.commands import AssignTaskRequest
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.wire import decode_json, join_path


def test_a_body_decodes_into_its_type() -> None:
    assert decode_json(b'{"agent_id": "a1", "task_id": "t1"}', AssignTaskRequest) == AssignTaskRequest(
        agent_id="a1", task_id="t1"
    )
    assert decode_json(b"", dict) == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"name": "a", "resources": {"memory_mb": "lots"}}', "resources.memory_mb"),
        (b'{"name": "a", "network_access": ["ok", 3]}', "network_access[1]"),
        (b'{"resources": {}}', "name"),
        (b"{not json", "(body)"),
    ],
)
def test_a_refused_body_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_json(body, AgentConfig)
    assert caught.value.details["field"] == field


def test_unknown_keys_of_a_command_are_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        decode_json(b'{"task_id": "t1", "extra": 1}', AssignTaskRequest)
    assert caught.value.details["field"] == "extra"


def test_paths_join_like_the_config_reads() -> None:
    assert join_path("", "name") == "name"
    assert join_path("config", "name") == "config.name"
    assert join_path("config", "[2]") == "config[2]"
