"""The declarations of a file: each name collected once (a duplicate is reported), metadata, type
references and references by name to another declaration of the file."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from symbi_contracts.lifecycle.config import VERSION_RE

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import Diagnostic, Reporter
from symbi_dsl.values import Values, did_you_mean, keyed_entries, name_span, value_of

BUILTIN_TYPES = {
    "String": 0,
    "Int": 0,
    "Float": 0,
    "Bool": 0,
    "int": 0,
    "float": 0,
    "bool": 0,
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
    warnings: list[Diagnostic] = field(default_factory=list)
    #: The lines of unsupported warnings past the reporter's limit (not in ``warnings``; registration refuses them).
    unlisted_unsupported: list[int] = field(default_factory=list)


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
        # Symbiont reads any metadata key and value: ours are checked, but only as warnings.
        got = keyed_entries(self.rep, item.entries, METADATA_KEYS, "metadata", lenient=True)
        for key, entry in got.items():
            value = value_of(entry)
            if key == "tags" and isinstance(value, A.Array):
                self.program.metadata[key] = [str(i.value) for i in value.items if isinstance(i, A.Literal_)]
            elif isinstance(value, A.Literal_) and value.kind == "string":
                self.program.metadata[key] = str(value.value)
            else:
                what = "a list of strings" if key == "tags" else "a string"
                self.rep.warn("type", f"metadata {key} should be {what}; it is ignored", value.span)
        version = self.program.metadata.get("version")
        if version is not None and not VERSION_RE.match(version):
            self.rep.warn(
                "value",
                f"version should be like 1.2.3, got {version!r}; it is ignored",
                value_of(got["version"]).span,
                f"write {version}.0" if re.fullmatch(r"\d+\.\d+", version) else "",
            )
            del self.program.metadata["version"]

    def _ref(
        self,
        e: A.Expr,
        table: dict[Any, Any],
        what: str,
        key: Callable[[str], Any] = lambda s: s,
        *,
        lenient: bool = False,
    ) -> str | None:
        """A reference by name to a declaration of this file (``lenient``: one elsewhere is only a warning)."""
        name = e.id if isinstance(e, A.Name) else e.value if isinstance(e, A.Literal_) and e.kind == "string" else None
        if not isinstance(name, str):
            self.rep.error("type", f"expected the name of a {what}", e.span)
            return None
        if key(name) not in table:
            names = [k[1] if isinstance(k, tuple) else k for k in table]
            hint = did_you_mean(name, names) or (f"defined: {', '.join(names)}" if names else f"define the {what}")
            report = self.rep.warn if lenient else self.rep.error
            report("undefined", f"{what} {name!r} is not defined in this file", e.span, hint)
            return None
        return name

    # --- types

    def check_type(self, t: A.TypeRef) -> None:
        if t.name in BUILTIN_TYPES:
            arity = BUILTIN_TYPES[t.name]
            if len(t.args) != arity:
                self.rep.warn("type", f"{t.name} takes {arity} type argument(s), got {len(t.args)}", t.span)
        elif t.name not in self.program.types:
            # Symbiont does not resolve type names: an unknown one is only a warning (types are not checked).
            hint = did_you_mean(t.name, [*BUILTIN_TYPES, *self.program.types]) or "define it with type …"
            self.rep.warn("undefined", f"type {t.name!r} is not defined", t.span, hint)
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
