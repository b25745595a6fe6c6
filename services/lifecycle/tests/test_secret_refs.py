"""An agent's secret references are checked at registration: names only, each one the store can hold."""

from __future__ import annotations

from symbi_contracts.lifecycle.config import AgentConfig, Workload
from symbi_lifecycle.config import validate_config


def test_secret_names_and_vault_env_values_are_checked() -> None:
    good = AgentConfig(
        name="caller",
        secrets=("providers/openai/api_key", "vault://db/password"),
        workload=Workload(image="symbi/x:1", env={"KEY_FILE": "vault://webhooks/github.token", "MODE": "fast"}),
    )
    assert validate_config(good) == []
    bad = AgentConfig(
        name="caller",
        secrets=("../etc/passwd", "db/password", "db/password"),
        workload=Workload(image="symbi/x:1", env={"KEY": "vault://Not Valid"}),
    )
    issues = {i.field: i.message for i in validate_config(bad)}
    assert "not a secret name" in issues["secrets[0]"]
    assert "duplicate" in issues["secrets[2]"]
    assert "not a secret reference" in issues["workload.env.KEY"]
