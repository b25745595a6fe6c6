"""Meaning: definitions compile to the lifecycle's configuration shape and policies to schema-valid Cedar."""

from __future__ import annotations

from pathlib import Path

import cedarpy
import pytest
from symbi_common.decisions import Allow, AllowWithConditions, DecisionRequest, Deny, EntityRef
from symbi_common.policy.cedar import compile_policies, schema_text
from symbi_common.policy.engine import PolicyEngine
from symbi_dsl import DslError, check, compile_agent

EXAMPLES = sorted((Path(__file__).parents[3] / "examples" / "agents").glob("*.symbi"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_compiles_to_schema_valid_cedar(path: Path) -> None:
    config = compile_agent(path.read_text(), agent_id="agent-1", file=str(path))
    assert config["workload"]["image"]
    for policy in config.get("policies", []):
        result = cedarpy.validate_policies(policy["cedar"], schema_text())
        assert result.validation_passed, result.errors
        # The policy service accepts it as a policy set.
        assert compile_policies("agent-1", policy["cedar"])


def test_a_definition_compiles_to_the_config_shape() -> None:
    config = compile_agent(
        """metadata { version = "2.0.0", description = "from metadata" }
memory notes { store: vector, path: "n", retention: 90d, max_size: 2GB, search { vector_weight: 0.6 } }
agent my_agent() {
  capabilities = [web.fetch, "text.summarise"]
  network = ["api.example.com"]
  apis = ["https://api.example.com/v1"]
  filesystem = [{path: "/data", mode: "read_write"}, {path: "/ro"}]
  workload = {image: "symbi/x:1", command: ["run", "--fast"], env: {A: "1"}, workdir: "/w"}
  memory = notes
  with sandbox = gvisor, timeout = 2.minutes, memory = 1GiB, cpu = 1.5, disk_io = 50, network_io = 5 { }
}
schedule nightly { cron: "0 3 * * *", agent: my_agent, one_shot: true, input: [1, "two"] }
""",
        agent_id="id-7",
    )
    assert config == {
        "name": "my-agent",
        "version": "2.0.0",
        "description": "from metadata",
        "capabilities": ["web.fetch", "text.summarise"],
        "network_access": ["api.example.com"],
        "external_apis": ["https://api.example.com/v1"],
        "filesystem_access": [{"path": "/data", "mode": "read_write"}, {"path": "/ro", "mode": "read"}],
        "workload": {"image": "symbi/x:1", "command": ["run", "--fast"], "workdir": "/w", "env": {"A": "1"}},
        "memory": {
            "name": "notes",
            "store": "vector",
            "path": "n",
            "retention_s": 90 * 86400.0,
            "max_bytes": 2_000_000_000,
            "vector_weight": 0.6,
        },
        "security_tier": "tier2",
        "resources": {
            "execution_timeout_s": 120.0,
            "memory_mb": 1024,
            "cpu_cores": 1.5,
            "disk_io_mbps": 50,
            "network_io_mbps": 5,
        },
        "schedules": [{"name": "nightly", "cron": "0 3 * * *", "one_shot": True, "input": '[1,"two"]'}],
    }


def test_rules_compile_to_annotated_cedar() -> None:
    config = compile_agent(
        """agent a() {
  policy guard {
    allow: tool.invoke("search") if context.classification == "public"
    deny: data.write("*") if !(context.destination in ["lake"])
    require: approval(data.write("exports"))
    require: redact(data.read("patients"), ["ssn", "dob"])
    require: cap_resources(sandbox.start, {memory_mb: 512, cpu_cores: 1})
    audit: [memory.read, memory.write]
  }
}""",
        agent_id="a-1",
    )
    [policy] = config["policies"]
    assert policy["name"] == "guard"
    assert policy["source"].startswith("policy guard {")
    statements = policy["cedar"].split("\n\n")
    assert statements[0] == (
        '@id("a-1.guard.1")\n'
        'permit (principal == Agent::"a-1", action == Action::"tool.invoke", resource == Tool::"search")\n'
        'when { (context has classification && context.classification == "public") };'
    )
    assert statements[1] == (
        '@id("a-1.guard.2")\n'
        '@reason("policy guard: deny: data.write(\\"*\\") if !(context.destination in [\\"lake\\"])")\n'
        'forbid (principal == Agent::"a-1", action == Action::"data.write", resource is Data)\n'
        'when { !((context has destination && ["lake"].contains(context.destination))) };'
    )
    assert '@require_approval("true")' in statements[2]
    assert '@redact("ssn,dob")' in statements[3]
    assert '@cap_resources("memory_mb=512,cpu_cores=1")' in statements[4]
    assert statements[5].startswith('@id("a-1.guard.6")\n@log_full("true")\npermit (principal == Agent::"a-1", ')
    assert 'action in [Action::"memory.read", Action::"memory.write"]' in statements[5]


def _request(action: str, rtype: str, rid: str, **context: object) -> DecisionRequest:
    return DecisionRequest(
        principal=EntityRef(type="Agent", id="a-1"),
        action=action,
        resource=EntityRef(type=rtype, id=rid),
        context=dict(context),
    )


def test_compiled_policies_decide_as_written() -> None:
    config = compile_agent(
        """agent a() {
  policy guard {
    allow: data.write("lake")
    deny: data.write("*") if !(context.destination in ["lake"])
    require: redact(data.read("patients"), ["ssn"])
  }
}""",
        agent_id="a-1",
    )
    engine = PolicyEngine({"a-1": compile_policies("a-1", config["policies"][0]["cedar"])}, 1)
    allowed = engine.decide(_request("data.write", "Data", "lake", destination="lake"))
    assert isinstance(allowed, Allow)
    assert allowed.policies
    denied = engine.decide(_request("data.write", "Data", "lake", destination="pastebin"))
    assert isinstance(denied, Deny)
    assert "deny: data.write" in denied.reason
    redacted = engine.decide(_request("data.read", "Data", "patients"))
    assert isinstance(redacted, AllowWithConditions)
    assert redacted.conditions[0].params == {"fields": ["ssn"]}
    # Nothing permits other actions: default deny.
    assert isinstance(engine.decide(_request("tool.invoke", "Tool", "x")), Deny)


def test_top_level_policies_are_compiled_for_each_agent_that_uses_them() -> None:
    source = """policy shared { deny: tool.invoke("shell") }
agent one() { policies = [shared] }
agent two() { policies = [shared] }
"""
    one = compile_agent(source, agent="one", agent_id="id-1")
    two = compile_agent(source, agent="two", agent_id="id-2")
    assert 'principal == Agent::"id-1"' in one["policies"][0]["cedar"]
    assert 'principal == Agent::"id-2"' in two["policies"][0]["cedar"]
    assert set(check(source).configs) == {"one", "two"}


def test_a_policy_used_twice_is_an_error() -> None:
    with pytest.raises(DslError) as info:
        check("policy p { deny: tool.invoke }\nagent a() {\n  policies = [p, p]\n}\n")
    assert [(d.code, d.line) for d in info.value.diagnostics] == [("duplicate", 3)]


def test_secrets_and_vault_env_values_compile_to_names_never_values() -> None:
    import msgspec
    from symbi_contracts.lifecycle.config import AgentConfig

    config = compile_agent(
        """agent caller() {
  secrets = [vault://providers/openai/api_key]
  workload = {image: "symbi/x:1", env: {DB_PASSWORD_FILE: vault://db/password, MODE: "fast"}}
}
""",
        agent_id="id-1",
    )
    assert config["secrets"] == ["providers/openai/api_key"]
    assert config["workload"]["env"] == {"DB_PASSWORD_FILE": "vault://db/password", "MODE": "fast"}
    assert msgspec.convert(config, AgentConfig).secrets == ("providers/openai/api_key",)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('agent a() { secrets = ["providers/key"] }\n', "expected a secret reference"),
        ("agent a() { secrets = [vault://Upper/Case] }\n", "names no secret the store can hold"),
        ("agent a() { secrets = [vault://a/b, vault://a/b] }\n", "listed twice"),
        ("agent a() { secrets = vault://a/b }\n", "a list of secret references"),
    ],
)
def test_bad_secret_references_are_errors(source: str, message: str) -> None:
    with pytest.raises(DslError) as info:
        compile_agent(source, agent_id="id-1")
    assert message in str(info.value)


def test_an_agents_quota_compiles_to_its_config() -> None:
    import msgspec
    from symbi_contracts.lifecycle.config import AgentConfig, AgentQuota

    config = compile_agent(
        'agent batch() {\n  quota = {concurrent_tasks: 2, cpu_seconds_per_day: 3600}\n  workload = {image: "x/y:1"}\n}\n',
        agent_id="id-1",
    )
    assert config["quota"] == {"concurrent_tasks": 2, "cpu_seconds_per_day": 3600.0}
    assert msgspec.convert(config, AgentConfig).quota == AgentQuota(concurrent_tasks=2, cpu_seconds_per_day=3600.0)
    with pytest.raises(DslError, match="must be between"):
        compile_agent("agent b() { quota = {cpu_seconds_per_day: 99999999999} }\n", agent_id="id-1")
    with pytest.raises(DslError, match="unknown key"):
        compile_agent("agent b() { quota = {tokens: 5} }\n", agent_id="id-1")
