"""The import rules of the workspace: no service imports another, and contracts and domain modules do no I/O.

The rules are import-linter contracts in the root ``pyproject.toml`` (``[tool.importlinter]``); this test runs
them, so a change that breaks one fails the build. Import-linter reads the static import graph; the
transitive check below also imports each pure module in a fresh interpreter and looks at what got loaded,
which catches what the static graph does not model (a package's ``__init__`` that pulls in I/O).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: Top-level packages that do I/O (network, database, containers, metrics and tracing exporters).
IO_PACKAGES = (
    "nats",
    "asyncpg",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "docker",
    "prometheus_client",
    "opentelemetry",
    "qdrant_client",
    "onnxruntime",
)

#: Modules that must stay pure: every contract module, the shared domain building blocks, each domain (and the
#: other pure parts of a service that already stand alone).
PURE_MODULES = (
    "symbi_contracts",
    "symbi_contracts.context.commands",
    "symbi_contracts.lifecycle.commands",
    "symbi_contracts.lifecycle.config",
    "symbi_contracts.lifecycle.events",
    "symbi_contracts.policy.commands",
    "symbi_contracts.sandbox_agent.commands",
    "symbi_contracts.sandbox_agent.events",
    "symbi_contracts.sandbox_agent.errors",
    "symbi_contracts.sandbox_agent.risk",
    "symbi_contracts.scheduler.events",
    "symbi_contracts.subjects",
    "symbi_contracts.wire",
    "symbi_common.domain",
    "symbi_common.events",
    "symbi_dsl",
    "symbi_lifecycle.domain",
    "symbi_lifecycle.config",
    "symbi_scheduler.domain",
    "symbi_sandbox_agent.domain",
    "symbi_common.caps",
    "symbi_scheduler.core",
    "symbi_scheduler.records",
    "symbi_scheduler.capacity",
    "symbi_scheduler.model",
    "symbi_scheduler.admission",
    "symbi_scheduler.chores",
    "symbi_scheduler.schedules",
    "symbi_scheduler.risk",
    "symbi_context.domain",
    "symbi_policy.domain",
    # The policy package's pure parts (its __init__ loads its I/O members only on first use), and the gateway's
    # action checks that use them.
    "symbi_common.policy",
    "symbi_common.policy.engine",
    "symbi_common.policy.enforcement",
    "symbi_sandbox_agent.actions",
)


def lint_imports(cwd: Path, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )


def test_the_workspace_keeps_its_import_contracts() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout


def test_the_linter_fails_on_a_service_importing_another_and_on_an_impure_domain(tmp_path: Path) -> None:
    """The same kinds of contract over a small tree that breaks both: the check can fail."""
    for package, source in {
        "svc_a/__init__.py": "",
        "svc_a/app.py": "from svc_b.domain import Thing\n",
        "svc_b/__init__.py": "",
        "svc_b/domain.py": "import nats\n\nThing = object\n",
    }.items():
        path = tmp_path / package
        path.parent.mkdir(exist_ok=True)
        path.write_text(source)
    (tmp_path / ".importlinter").write_text(
        textwrap.dedent(
            """
            [importlinter]
            root_packages =
                svc_a
                svc_b
            include_external_packages = True

            [importlinter:contract:independent]
            name = No service imports another service
            type = independence
            modules =
                svc_a
                svc_b

            [importlinter:contract:pure]
            name = Domain modules import no I/O
            type = forbidden
            source_modules =
                svc_b.domain
            forbidden_modules =
                nats
            """
        )
    )
    result = lint_imports(tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": str(LINT_IMPORTS.parent)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No service imports another service BROKEN" in result.stdout
    assert "Domain modules import no I/O BROKEN" in result.stdout


@pytest.mark.parametrize("module", PURE_MODULES)
def test_importing_a_pure_module_loads_no_io_package(module: str) -> None:
    probe = (
        f"import json, sys, importlib; importlib.import_module({module!r}); "
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(IO_PACKAGES)!r}))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"importing {module} loads {result.stdout.strip()}"
