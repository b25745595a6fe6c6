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
PURE = ("domain", "spec", "tasks", "output", "errors", "config", "grants", "data_roots")
IO_PACKAGES = ("nats", "docker", "asyncpg", "asyncio", "fastapi", "prometheus_client", "opentelemetry", "structlog")


def imports_within_package() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            deps.update(n.split(".")[1] for n in names if n.startswith("symbi_sandbox_agent."))
        graph[path.stem] = deps
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
