"""The Symbiont DSL: parse, validate, format and compile agent definitions (``.symbi`` files).

- :func:`parse` — text to syntax tree (:mod:`symbi_dsl.ast`), grammar in ``symbiont.lark``;
- :func:`check` — every syntax and meaning problem of a file at once, as :class:`DslError` diagnostics;
- :func:`compile_agent` — the agent's configuration as a dict shaped like the lifecycle's ``AgentConfig``;
- :func:`format_source` — the canonical text of a definition.
"""

from symbi_dsl.compiler import Program, check, compile_agent, config_name
from symbi_dsl.diagnostics import Diagnostic, DslError
from symbi_dsl.formatter import format_source
from symbi_dsl.parser import parse

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
