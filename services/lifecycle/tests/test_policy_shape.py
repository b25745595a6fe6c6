"""An agent's own policies are checked for shape before any Cedar parser reads them: text nested deeper than
Cedar's parser survives (it overflows the stack and kills the process, no exception) is an issue of the
definition, not a crash of the lifecycle service. Run in a child process, so a crash fails the test instead of
ending the run."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
from symbi_contracts.lifecycle.config import AgentConfig, PolicySpec
from symbi_lifecycle.config import validate_config
deep = 'forbid(principal == Agent::"a-1", action, resource) when { ' + "(" * 1000 + "true" + ")" * 1000 + " };"
issues = validate_config(AgentConfig(name="reader", policies=(PolicySpec(name="deep", cedar=deep),)), "a-1")
print([(i.field, i.message[:60]) for i in issues])
"""


def test_an_agent_policy_nested_too_deeply_is_an_issue_not_a_crash() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "policies[0].cedar" in done.stdout
    assert "is not acceptable Cedar" in done.stdout
