"""The Symbiont DSL: parse, validate, format and compile agent definitions (``.symbi`` files).

- :func:`parse` — text to syntax tree (:mod:`symbi_dsl.ast`), grammar in ``symbiont.lark``;
- :func:`check` — every syntax and meaning problem of a file at once, as :class:`DslError` diagnostics;
- :func:`compile_agent` — the agent's configuration as a dict shaped like the lifecycle's ``AgentConfig``;
- :func:`format_source` — the canonical text of a definition;
- :mod:`symbi_dsl.interpreter` and :mod:`symbi_dsl.body` — running an agent's body (in the sandbox).

The names are imported on first use, so the sandbox's runner (parser and interpreter only) needs neither the
checks' dependencies (``symbi_contracts``, ``croniter``) nor their import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from symbi_dsl.compiler import Program, check, compile_agent, config_name
    from symbi_dsl.diagnostics import Diagnostic, DslError
    from symbi_dsl.formatter import format_source
    from symbi_dsl.parser import parse

_WHERE = {
    "Program": "compiler",
    "check": "compiler",
    "compile_agent": "compiler",
    "config_name": "compiler",
    "Diagnostic": "diagnostics",
    "DslError": "diagnostics",
    "format_source": "formatter",
    "parse": "parser",
}

__all__ = [
    "Diagnostic",
    "DslError",
    "Program",
    "check",
    "compile_agent",
    "config_name",
    "format_source",
    "parse",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'symbi_dsl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"symbi_dsl.{module}"), name)
    globals()[name] = value
    return value
