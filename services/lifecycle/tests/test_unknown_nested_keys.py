"""An unknown key anywhere in a config is refused naming its path, not silently dropped: a misspelt quota would
otherwise register an agent with no quota at all (fails open), a misspelt time zone would run its schedule in
UTC, a misspelt policy key would drop what it said. Stored events still decode with keys they do not know."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from symbi_common.errors import BadRequest
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_lifecycle.config import convert_config

from .conftest import Running

POLICY = 'permit (principal == Agent::"typo", action == Action::"tool.invoke", resource);'
TYPOS: list[tuple[dict[str, Any], str]] = [
    ({"quota": {"concurent_tasks": 1}}, "config.quota.concurent_tasks"),
    (
        {"schedules": [{"name": "daily", "cron": "0 9 * * *", "timezon": "Europe/Berlin"}]},
        "config.schedules[0].timezon",
    ),
    (
        {"policies": [{"name": "p", "cedar": POLICY}, {"name": "q", "cedar": POLICY, "sorce": "x"}]},
        "config.policies[1].sorce",
    ),
    ({"workload": {"image": "symbi/busybox:1", "enviroment": {}}}, "config.workload.enviroment"),
    ({"memory": {"name": "notes", "stor": "markdown"}}, "config.memory.stor"),
    ({"budget": {"tokens_per_dya": 5}}, "config.budget.tokens_per_dya"),
    ({"mcp_servers": [{"name": "files", "url": "https://h/mcp", "approved": 1}]}, "config.mcp_servers[0].approved"),
]


@pytest.mark.parametrize(("extra", "field"), TYPOS, ids=[f for _, f in TYPOS])
def test_an_unknown_nested_key_is_refused_naming_its_path(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as err:
        convert_config({"name": "typo", **extra})
    assert err.value.details["field"] == field
    assert "unknown field" in err.value.message


def test_known_nested_keys_and_free_form_maps_still_pass() -> None:
    config = convert_config(
        {
            "name": "typo",
            "quota": {"concurrent_tasks": 2},
            "schedules": [{"name": "daily", "cron": "0 9 * * *", "timezone": "Europe/Berlin"}],
            "workload": {"image": "symbi/busybox:1", "env": {"ANY_NAME": "x"}},
            "memory": None,
        }
    )
    assert config.quota.concurrent_tasks == 2
    assert config.schedules[0].timezone == "Europe/Berlin"
    assert config.workload is not None
    assert config.workload.env == {"ANY_NAME": "x"}


def test_stored_configs_with_keys_of_a_newer_version_still_decode() -> None:
    newer = {"name": "n", "quota": {"concurrent_tasks": 1, "added_later": 3}, "added_later": True}
    assert msgspec.json.decode(msgspec.json.encode(newer), type=AgentConfig).quota.concurrent_tasks == 1


async def test_the_api_refuses_unknown_nested_keys_with_400(running: Running) -> None:
    for extra, field in TYPOS[:3]:
        r = await running.http.post("/v1/agents", json={"agent_id": "typo", "config": {"name": "typo", **extra}})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"]["field"] == field
    assert (await running.http.get("/v1/agents/typo")).status_code == 404
