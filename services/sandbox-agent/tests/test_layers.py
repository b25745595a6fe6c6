"""The sandbox-agent's modules form layers: no import cycles, and the pure modules import no I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import symbi_sandbox_agent

PACKAGE = Path(symbi_sandbox_agent.__file__).parent
#: Modules that must stay pure: importing them loads no messaging, Docker, database, HTTP or asyncio.
#: (``actions`` is pure code too, but the ``symbi_common.policy`` package it takes the Cedar schema from
#: loads the whole enforcement point on import.)
PURE = (
    "domain",
    "spec",
    "tasks",
    "output",
    "errors",
    "config",
    "grants",
    "data_roots",
    "egress.rules",
    "egress.addresses",
    "egress.tls",
    "egress.bucket",
    "egress.http1",
    "egress.decisions",
    "egress.internal",
)
IO_PACKAGES = ("nats", "docker", "asyncpg", "asyncio", "fastapi", "prometheus_client", "opentelemetry", "structlog")


def module_name(path: Path) -> str:
    """``egress/rules.py`` → ``egress.rules``; a subpackage's ``__init__.py`` is the subpackage."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_within_package() -> dict[str, set[str]]:
    """Every module of the package (subpackages included) and the modules of the package it imports."""
    paths = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"]
    modules = {module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}".partition(".")[2] in modules else base for a in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            deps.update(n.partition(".")[2] for n in names if n.startswith("symbi_sandbox_agent."))
        graph[module_name(path)] = deps - {module_name(path)}
    return graph


def test_no_module_imports_itself_back() -> None:
    graph = imports_within_package()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    assert "application" not in graph["gateway"]
    assert "host" not in graph["application"]
    assert not any(graph[m] & {"host", "application", "supervisor", "gateway", "docker_host"} for m in PURE)


def test_the_pure_modules_load_no_io() -> None:
    code = (
        "import sys\n"
        + "".join(f"import symbi_sandbox_agent.{m}\n" for m in PURE)
        + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({IO_PACKAGES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
