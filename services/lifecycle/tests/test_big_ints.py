"""Integers past what the stores hold (64-bit: msgpack payloads, PostgreSQL bigint) are typed 400s, never a 500."""

from __future__ import annotations

import pytest
from symbi_common.bounds import INT64_MAX, check_ints, parse_int
from symbi_common.errors import BadRequest

from .conftest import Running
from .test_api import GOOD

HUGE = 10**21


async def test_huge_integers_in_bodies_and_queries_are_400s_naming_the_field(running: Running) -> None:
    http = running.http
    body = {"agent_id": "big", "config": {**GOOD, "resources": {"memory_mb": HUGE}}}
    r = await http.post("/v1/agents", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"]["field"] == "config.resources.memory_mb"
    assert "out of range" in r.json()["error"]["message"]
    r = await http.post("/v1/agents", json={"agent_id": "ok", "config": GOOD})
    assert r.status_code == 201, r.text
    r = await http.post(
        "/v1/agents/ok/configure", json={"config": {**GOOD, "resources": {"cpu_cores": 1, "memory_mb": -HUGE}}}
    )
    assert r.status_code == 400, r.text
    for path, field in (
        (f"/v1/agents?limit={HUGE}", "limit"),
        (f"/v1/agents?min_sequence={HUGE}", "min_sequence"),
        (f"/v1/agents/ok?min_sequence={HUGE}", "min_sequence"),
        (f"/v1/agents/ok/events?after_version={HUGE}", "after_version"),
        ("/v1/agents/ok/events?limit=%C2%B2", "limit"),  # a superscript two is a digit to Python, not to us
    ):
        r = await http.get(path)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["details"]["field"] == field


async def test_huge_numbers_in_a_definition_are_refused_not_a_500(running: Running) -> None:
    for i, line in enumerate((f"memory = {HUGE}MB", f"memory = {HUGE}GB", f"cpu = {HUGE}", f"timeout = {HUGE}s")):
        definition = f"""agent big(x: String) -> String {{
  version = "1.0.0"
  capabilities = [text.generate]
  workload = {{image: "symbi/busybox:1", command: ["true"]}}
  with sandbox = tier1, {line} {{}}
}}
"""
        r = await running.http.post("/v1/agents", json={"agent_id": f"big-{i}", "definition": definition})
        assert r.status_code in (201, 400, 422), (line, r.text)
        if r.status_code == 201:
            assert r.json()["state"] == "Failed", (line, r.text)


async def test_huge_integers_in_nats_commands_are_bad_requests(running: Running) -> None:
    body = {"agent_id": "big-cmd", "config": {**GOOD, "resources": {"memory_mb": HUGE}}}
    with pytest.raises(BadRequest) as exc:
        await running.client.call("lifecycle", "register", body, dict)
    assert exc.value.details["field"] == "config.resources.memory_mb"


def test_bounds() -> None:
    assert parse_int(str(INT64_MAX), "x") == INT64_MAX
    assert parse_int(" -5 ", "x") == -5
    for raw in (str(INT64_MAX + 1), "1e3", "", "²", "1_000", "9" * 40):
        with pytest.raises(BadRequest):
            parse_int(raw, "x")
    check_ints({"a": [1, True, {"b": -(2**63)}]})
    with pytest.raises(BadRequest) as exc:
        check_ints({"a": [1, {"b": 2**64}]})
    assert exc.value.details["field"] == "a[1].b"
