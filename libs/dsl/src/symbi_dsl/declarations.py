"""The declarations of a file: each name collected once (a duplicate is reported), metadata, type
references and references by name to another declaration of the file."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import Reporter
from symbi_dsl.values import Values, did_you_mean, keyed_entries, name_span, value_of

BUILTIN_TYPES = {
    "String": 0,
    "Int": 0,
    "Float": 0,
    "Bool": 0,
    "Duration": 0,
    "Size": 0,
    "Bytes": 0,
    "Any": 0,
    "Json": 0,
    "Url": 0,
    "Secret": 0,
    "DateTime": 0,
    "List": 1,
    "Set": 1,
    "Optional": 1,
    "Map": 2,
}
VERSION_RE = re.compile(r"^\d{1,9}\.\d{1,9}\.\d{1,9}(?:[-+][0-9A-Za-z.-]{1,64})?$")


@dataclass
class Program:
    """A checked file: its declarations by name, and each agent's compiled configuration."""

    module: A.Module
    metadata: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, A.Agent] = field(default_factory=dict)
    policies: dict[str, A.Policy] = field(default_factory=dict)
    types: dict[str, A.TypeAlias_ | A.TypeRecord] = field(default_factory=dict)
    functions: dict[str, A.Function] = field(default_factory=dict)
    blocks: dict[tuple[str, str], A.Block] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


METADATA_KEYS = ("name", "version", "author", "description", "tags", "license", "homepage")


class Declarations:
    """The file-wide pass over one module's declarations, collecting every problem into the reporter."""

    def __init__(self, module: A.Module, rep: Reporter) -> None:
        self.module = module
        self.rep = rep
        self.v = Values(rep)
        self.program = Program(module)

    # --- declarations and names

    def _declare(self, table: dict[Any, Any], key: Any, node: Any, what: str) -> None:
        if key in table:
            first = table[key].span.line
            self.rep.error(
                "duplicate",
                f"{what} {node.name!r} is defined twice (first on line {first})",
                name_span(node),
                "rename or remove one of them",
            )
            return
        table[key] = node

    def collect(self) -> None:
        p = self.program
        seen_metadata = False
        for item in self.module.items:
            match item:
                case A.Metadata():
                    if seen_metadata:
                        self.rep.error("duplicate", "a file has at most one metadata block", item.span)
                    seen_metadata = True
                    self._metadata(item)
                case A.Agent():
                    self._declare(p.agents, item.name, item, "agent")
                case A.Policy():
                    self._declare(p.policies, item.name, item, "policy")
                case A.TypeAlias_() | A.TypeRecord():
                    if item.name in BUILTIN_TYPES:
                        self.rep.error("duplicate", f"{item.name!r} is a built-in type", name_span(item))
                    self._declare(p.types, item.name, item, "type")
                case A.Function():
                    self._declare(p.functions, item.name, item, "function")
                case A.Block():
                    self._declare(p.blocks, (item.kind, item.name), item, item.kind)

    def _metadata(self, item: A.Metadata) -> None:
        got = keyed_entries(self.rep, item.entries, METADATA_KEYS, "metadata")
        for key, entry in got.items():
            if key == "tags":
                self.program.metadata[key] = [t for t, _ in self.v.strings(value_of(entry))]
            else:
                value = self.v.string(value_of(entry))
                if value is not None:
                    self.program.metadata[key] = value
        version = self.program.metadata.get("version")
        if version is not None and not VERSION_RE.match(version):
            self.rep.error("value", f"version must be like 1.2.3, got {version!r}", value_of(got["version"]).span)

    def _ref(self, e: A.Expr, table: dict[Any, Any], what: str, key: Callable[[str], Any] = lambda s: s) -> str | None:
        """A reference by name to a declaration of this file."""
        name = e.id if isinstance(e, A.Name) else e.value if isinstance(e, A.Literal_) and e.kind == "string" else None
        if not isinstance(name, str):
            self.rep.error("type", f"expected the name of a {what}", e.span)
            return None
        if key(name) not in table:
            names = [k[1] if isinstance(k, tuple) else k for k in table]
            hint = did_you_mean(name, names) or (f"defined: {', '.join(names)}" if names else f"define the {what}")
            self.rep.error("undefined", f"{what} {name!r} is not defined in this file", e.span, hint)
            return None
        return name

    # --- types

    def check_type(self, t: A.TypeRef) -> None:
        if t.name in BUILTIN_TYPES:
            arity = BUILTIN_TYPES[t.name]
            if len(t.args) != arity:
                self.rep.error("type", f"{t.name} takes {arity} type argument(s), got {len(t.args)}", t.span)
        elif t.name not in self.program.types:
            hint = did_you_mean(t.name, [*BUILTIN_TYPES, *self.program.types]) or "define it with type …"
            self.rep.error("undefined", f"type {t.name!r} is not defined", t.span, hint)
        elif t.args:
            self.rep.error("type", f"{t.name} takes no type arguments", t.span)
        for arg in t.args:
            self.check_type(arg)

    def _params(self, params: Sequence[A.Param]) -> None:
        seen: set[str] = set()
        for p in params:
            if p.name in seen:
                self.rep.error("duplicate", f"parameter {p.name!r} is declared twice", p.span)
            seen.add(p.name)
            self.check_type(p.type)
