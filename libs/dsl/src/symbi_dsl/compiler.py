"""Meaning: validate a parsed definition and compile its agent into the lifecycle's configuration.

:func:`check` reports every problem of a file at once (unknown keys, wrong types, out-of-range
durations and sizes, duplicate names, undefined references, bad cron expressions, policies without a
Cedar meaning). :func:`compile_agent` returns the configuration as a plain ``dict`` in the shape of
``symbi_contracts.lifecycle.config.AgentConfig`` (the lifecycle service converts it), within the same
bounds (imported from there).

DSL names are identifiers (``data_pipeline``); agent configurations are named with DNS labels, so
``_`` becomes ``-``.
"""

from __future__ import annotations

import difflib
import json
import re
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]
from symbi_contracts.lifecycle.config import (
    CPU_CORES,
    DISK_IO_MBPS,
    EXECUTION_TIMEOUT_S,
    MEMORY_MB,
    MEMORY_STORES,
    NETWORK_IO_MBPS,
    PRIORITIES,
)

from symbi_dsl import ast as A
from symbi_dsl.cedar import compile_policy, dotted
from symbi_dsl.diagnostics import DEFAULT_FILE, Reporter
from symbi_dsl.parser import parse

RETENTION_S = (3_600.0, 10 * 366 * 86_400.0)  # 1 hour .. 10 years
MEMORY_STORE_BYTES = (1_000_000, 1_000_000_000_000)

TIERS = {"tier1": "tier1", "tier2": "tier2", "auto": "auto", "docker": "tier1", "runc": "tier1", "gvisor": "tier2"}
WEBHOOK_METHODS = ("GET", "POST", "PUT")
WEBHOOK_PROVIDERS = ("github", "gitlab", "stripe", "slack", "custom")
CHANNEL_PLATFORMS = ("slack", "teams", "mattermost", "discord")
FS_MODES = ("read", "read_write")
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
_VERSION_RE = re.compile(r"^\d{1,9}\.\d{1,9}\.\d{1,9}(?:[-+][0-9A-Za-z.-]{1,64})?$")
_CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")


def config_name(name: str) -> str:
    """The configuration name of a DSL agent name (``data_pipeline`` → ``data-pipeline``)."""
    return name.replace("_", "-").lower()


# --- reading values --------------------------------------------------------------------------------


@dataclass
class Values:
    """Typed reads of expressions; a wrong type is reported (with position) and read as None."""

    rep: Reporter

    def _bad(self, node: A.Expr | A.Entry, what: str, hint: str = "") -> None:
        self.rep.error("type", f"expected {what}", getattr(node, "span", None), hint)

    def string(self, e: A.Expr, what: str = "a string") -> str | None:
        if isinstance(e, A.Literal_) and e.kind == "string":
            return str(e.value)
        self._bad(e, what, "strings are written in double quotes")
        return None

    def word(self, e: A.Expr, choices: Sequence[str], what: str) -> str | None:
        """A name or string from ``choices`` (``tier2`` or ``"tier2"``)."""
        value = e.id if isinstance(e, A.Name) else e.value if isinstance(e, A.Literal_) and e.kind == "string" else None
        if isinstance(value, str) and value in choices:
            return value
        self.rep.error(
            "value", f"{what} must be one of {', '.join(choices)}", e.span, _did_you_mean(str(value or ""), choices)
        )
        return None

    def boolean(self, e: A.Expr) -> bool | None:
        if isinstance(e, A.Literal_) and e.kind == "bool":
            return bool(e.value)
        self._bad(e, "true or false")
        return None

    def number(self, e: A.Expr, bounds: tuple[float, float], unit: str) -> float | None:
        if isinstance(e, A.Literal_) and e.kind in ("int", "float"):
            value = float(e.value)  # type: ignore[arg-type]
            lo, hi = bounds
            if not lo <= value <= hi:
                self.rep.error("range", f"must be between {lo:g} and {hi:g} {unit}, got {value:g}", e.span)
                return None
            return value
        self._bad(e, f"a number ({unit})")
        return None

    def duration(self, e: A.Expr, bounds: tuple[float, float]) -> float | None:
        if isinstance(e, A.Quantity) and e.kind == "duration":
            lo, hi = bounds
            if not lo <= e.value <= hi:
                self.rep.error(
                    "range",
                    f"{e.text} is out of range: must be between {_human_s(lo)} and {_human_s(hi)}",
                    e.span,
                )
                return None
            return e.value
        self._bad(e, "a duration like 30s, 5m, 2h or 5.minutes")
        return None

    def size(self, e: A.Expr, bounds: tuple[float, float]) -> float | None:
        if isinstance(e, A.Quantity) and e.kind == "size":
            lo, hi = bounds
            if not lo <= e.value <= hi:
                self.rep.error(
                    "range", f"{e.text} is out of range: must be between {_human_b(lo)} and {_human_b(hi)}", e.span
                )
                return None
            return e.value
        self._bad(e, "a size like 512MB or 2GiB")
        return None

    def strings(self, e: A.Expr, *, names_ok: bool = False) -> list[tuple[str, A.Expr]]:
        """A list of strings (dotted names too, where ``names_ok``) with their nodes."""
        if not isinstance(e, A.Array):
            self._bad(e, "a list [ … ]")
            return []
        out: list[tuple[str, A.Expr]] = []
        for item in e.items:
            text = dotted(item) if names_ok and isinstance(item, A.Name | A.Member) else None
            if text is None:
                text = self.string(item)
            if text is not None:
                out.append((text, item))
        return out

    def secret(self, e: A.Expr) -> str | None:
        if isinstance(e, A.Secret):
            return f"vault://{e.path}"
        self._bad(e, "a secret reference like vault://path/to/secret", "secrets are never written as plain values")
        return None


def _human_s(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _human_b(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n:g}B"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _entries(
    rep: Reporter, entries: Sequence[A.Entry], allowed: Sequence[str], where: str, nested: Sequence[str] = ()
) -> dict[str, A.Entry]:
    """The entries by key; unknown, duplicate and wrongly nested keys are reported."""
    out: dict[str, A.Entry] = {}
    for entry in entries:
        if entry.key not in allowed:
            hint = _did_you_mean(entry.key, allowed) or f"known keys: {', '.join(allowed)}"
            rep.error("unknown_key", f"unknown key {entry.key!r} in {where}", _key_span(entry), hint)
            continue
        if entry.key in out:
            rep.error("duplicate", f"{entry.key!r} is set twice in {where}", _key_span(entry), "remove one of them")
            continue
        if isinstance(entry.value, tuple) and entry.key not in nested:
            rep.error("type", f"{entry.key!r} takes a value, not a block", _key_span(entry), f"write {entry.key}: …")
            continue
        if not isinstance(entry.value, tuple) and entry.key in nested:
            rep.error("type", f"{entry.key!r} is a block", _key_span(entry), f"write {entry.key} {{ … }}")
            continue
        out[entry.key] = entry
    return out


def _key_span(entry: A.Entry) -> A.Span:
    s = entry.span
    return A.Span(s.line, s.column, s.line, s.column + len(entry.key))


def _value(entry: A.Entry) -> A.Expr:
    assert not isinstance(entry.value, tuple)
    return entry.value


def _require(rep: Reporter, got: dict[str, A.Entry], keys: Sequence[str], where: str, span: A.Span) -> None:
    for key in keys:
        if key not in got:
            rep.error("missing", f"{where} needs {key!r}", span, f"add {key}: …")


def _to_json(e: A.Expr) -> Any:
    """A literal expression (strings, numbers, booleans, arrays, records) as JSON data; None if it is not one."""
    match e:
        case A.Literal_():
            return e.value
        case A.Quantity():
            return e.text
        case A.Array():
            return [_to_json(i) for i in e.items]
        case A.Record():
            return {k: _to_json(v) for k, v in e.fields}
    raise ValueError("not a literal")


# --- the checked program ---------------------------------------------------------------------------


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
AGENT_KEYS = (
    "version",
    "description",
    "capabilities",
    "policies",
    "network",
    "filesystem",
    "apis",
    "workload",
    "memory",
)
WITH_KEYS = ("sandbox", "timeout", "memory", "cpu", "disk_io", "network_io")
WORKLOAD_KEYS = ("image", "command", "env", "workdir", "actions")
SCHEDULE_KEYS = ("cron", "timezone", "agent", "one_shot", "input", "priority", "description")
MEMORY_KEYS = ("store", "path", "retention", "max_size", "search", "embedding")
SEARCH_KEYS = ("vector_weight", "keyword_weight")
WEBHOOK_KEYS = ("path", "method", "agent", "secret", "provider", "filter", "description")
CHANNEL_KEYS = ("platform", "workspace", "channels", "agent", "token", "policy", "description")


class Checker:
    """Checks one module, collecting every problem into the reporter."""

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
                _name_span(node),
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
                        self.rep.error("duplicate", f"{item.name!r} is a built-in type", _name_span(item))
                    self._declare(p.types, item.name, item, "type")
                case A.Function():
                    self._declare(p.functions, item.name, item, "function")
                case A.Block():
                    self._declare(p.blocks, (item.kind, item.name), item, item.kind)

    def _metadata(self, item: A.Metadata) -> None:
        got = _entries(self.rep, item.entries, METADATA_KEYS, "metadata")
        for key, entry in got.items():
            if key == "tags":
                self.program.metadata[key] = [t for t, _ in self.v.strings(_value(entry))]
            else:
                value = self.v.string(_value(entry))
                if value is not None:
                    self.program.metadata[key] = value
        version = self.program.metadata.get("version")
        if version is not None and not _VERSION_RE.match(version):
            self.rep.error("value", f"version must be like 1.2.3, got {version!r}", _value(got["version"]).span)

    def _ref(self, e: A.Expr, table: dict[Any, Any], what: str, key: Callable[[str], Any] = lambda s: s) -> str | None:
        """A reference by name to a declaration of this file."""
        name = e.id if isinstance(e, A.Name) else e.value if isinstance(e, A.Literal_) and e.kind == "string" else None
        if not isinstance(name, str):
            self.rep.error("type", f"expected the name of a {what}", e.span)
            return None
        if key(name) not in table:
            names = [k[1] if isinstance(k, tuple) else k for k in table]
            hint = _did_you_mean(name, names) or (f"defined: {', '.join(names)}" if names else f"define the {what}")
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
            hint = _did_you_mean(t.name, [*BUILTIN_TYPES, *self.program.types]) or "define it with type …"
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

    def check_declarations(self) -> None:
        for t in self.program.types.values():
            if isinstance(t, A.TypeAlias_):
                self.check_type(t.type)
            else:
                seen: set[str] = set()
                for fname, ftype in t.fields:
                    if fname in seen:
                        self.rep.error("duplicate", f"field {fname!r} is declared twice in type {t.name}", t.span)
                    seen.add(fname)
                    self.check_type(ftype)
        for f in self.program.functions.values():
            self._params(f.params)
            if f.returns is not None:
                self.check_type(f.returns)
        for policy in self.program.policies.values():
            # Compiled once for a placeholder principal, so a top-level policy no agent uses is still checked.
            compile_policy(policy, agent_id="check", reporter=self.rep, describe="policy")
        for (kind, _), block in self.program.blocks.items():
            getattr(self, f"_{kind}")(block)

    # --- blocks

    def _schedule(self, block: A.Block) -> dict[str, Any] | None:
        got = _entries(self.rep, block.entries, SCHEDULE_KEYS, f"schedule {block.name}")
        _require(self.rep, got, ("cron", "agent"), f"schedule {block.name}", _name_span(block))
        spec: dict[str, Any] = {"name": block.name}
        ok = True
        if "cron" in got:
            cron = self.v.string(_value(got["cron"]), "a cron expression in quotes")
            if cron is not None and not _valid_cron(cron):
                self.rep.error(
                    "cron",
                    f"{cron!r} is not a valid cron expression",
                    _value(got["cron"]).span,
                    'five fields: minute hour day-of-month month day-of-week, e.g. "0 2 * * *"',
                )
                ok = False
            spec["cron"] = cron
        if "timezone" in got:
            tz = _value(got["timezone"])
            name = dotted(tz) if isinstance(tz, A.Name) else self.v.string(tz)
            if name is not None and not _valid_zone(name):
                self.rep.error("value", f"{name!r} is not a time zone", tz.span, "use an IANA name like Europe/Berlin")
                ok = False
            spec["timezone"] = name
        if "agent" in got:
            spec["agent"] = self._ref(_value(got["agent"]), self.program.agents, "agent")
        if "one_shot" in got:
            spec["one_shot"] = self.v.boolean(_value(got["one_shot"]))
        if "priority" in got:
            spec["priority"] = self.v.word(_value(got["priority"]), PRIORITIES, "priority")
        if "input" in got:
            raw = _value(got["input"])
            if isinstance(raw, A.Literal_) and raw.kind == "string":
                spec["input"] = str(raw.value)
            else:
                try:
                    spec["input"] = json.dumps(_to_json(raw), separators=(",", ":"))
                except ValueError:
                    self.rep.error("type", "input is a string or a literal record/list", raw.span)
        if "description" in got:
            self.v.string(_value(got["description"]))
        if not ok or any(v is None for v in spec.values()):
            return None
        return spec

    def _memory(self, block: A.Block) -> dict[str, Any] | None:
        where = f"memory {block.name}"
        got = _entries(self.rep, block.entries, MEMORY_KEYS, where, nested=("search",))
        spec: dict[str, Any] = {"name": block.name}
        if "store" in got:
            spec["store"] = self.v.word(_value(got["store"]), MEMORY_STORES, "store")
        if "path" in got:
            spec["path"] = self.v.string(_value(got["path"]))
        if "retention" in got:
            spec["retention_s"] = self.v.duration(_value(got["retention"]), RETENTION_S)
        if "max_size" in got:
            size = self.v.size(_value(got["max_size"]), MEMORY_STORE_BYTES)
            spec["max_bytes"] = int(size) if size is not None else None
        if "embedding" in got:
            spec["embedding"] = self.v.string(_value(got["embedding"]))
        if "search" in got:
            value = got["search"].value
            assert isinstance(value, tuple)
            search = _entries(self.rep, value, SEARCH_KEYS, f"{where} search")
            for key, entry in search.items():
                spec[key] = self.v.number(_value(entry), (0.0, 1.0), "weight")
        return None if any(v is None for v in spec.values()) else spec

    def _webhook(self, block: A.Block) -> None:
        where = f"webhook {block.name}"
        got = _entries(self.rep, block.entries, WEBHOOK_KEYS, where)
        _require(self.rep, got, ("path", "agent"), where, _name_span(block))
        if "path" in got:
            path = self.v.string(_value(got["path"]))
            if path is not None and not re.match(r"^/[A-Za-z0-9/_.-]*$", path):
                self.rep.error("value", "a webhook path starts with '/' and has no spaces", _value(got["path"]).span)
        if "method" in got:
            self.v.word(_value(got["method"]), WEBHOOK_METHODS, "method")
        if "provider" in got:
            self.v.word(_value(got["provider"]), WEBHOOK_PROVIDERS, "provider")
        if "agent" in got:
            self._ref(_value(got["agent"]), self.program.agents, "agent")
        if "secret" in got:
            self.v.secret(_value(got["secret"]))
        if "filter" in got and not isinstance(_value(got["filter"]), A.Record):
            self.rep.error("type", 'filter is a record like {event: "push"}', _value(got["filter"]).span)
        if "description" in got:
            self.v.string(_value(got["description"]))

    def _channel(self, block: A.Block) -> None:
        where = f"channel {block.name}"
        got = _entries(self.rep, block.entries, CHANNEL_KEYS, where)
        _require(self.rep, got, ("platform", "agent"), where, _name_span(block))
        if "platform" in got:
            self.v.word(_value(got["platform"]), CHANNEL_PLATFORMS, "platform")
        if "workspace" in got:
            self.v.string(_value(got["workspace"]))
        if "channels" in got:
            self.v.strings(_value(got["channels"]))
        if "agent" in got:
            self._ref(_value(got["agent"]), self.program.agents, "agent")
        if "token" in got:
            self.v.secret(_value(got["token"]))
        if "policy" in got:
            self._ref(_value(got["policy"]), self.program.policies, "policy")
        if "description" in got:
            self.v.string(_value(got["description"]))

    # --- agents

    def agent_config(self, agent: A.Agent, agent_id: str | None = None) -> dict[str, Any] | None:
        """The configuration ``agent`` compiles to (policies named for ``agent_id``); None after errors."""
        before = len(self.rep.diagnostics)
        rep, v = self.rep, self.v
        self._params(agent.params)
        if agent.returns is not None:
            self.check_type(agent.returns)
        aid = agent_id or agent.name
        entries = [i for i in agent.items if isinstance(i, A.Entry)]
        got = _entries(rep, entries, AGENT_KEYS, f"agent {agent.name}", nested=())
        meta = self.program.metadata
        config: dict[str, Any] = {"name": config_name(agent.name)}
        version = v.string(_value(got["version"])) if "version" in got else meta.get("version")
        if version is not None:
            if not _VERSION_RE.match(version):
                span = _value(got["version"]).span if "version" in got else None
                rep.error("value", f"version must be like 1.2.3, got {version!r}", span)
            config["version"] = version
        description = v.string(_value(got["description"])) if "description" in got else meta.get("description")
        if description is not None:
            config["description"] = description
        if "capabilities" in got:
            caps = v.strings(_value(got["capabilities"]), names_ok=True)
            for cap, node in caps:
                if not _CAPABILITY_RE.match(cap):
                    rep.error("value", f"{cap!r} is not a capability name", node.span, "e.g. web.fetch or data.read")
            self._no_duplicates([c for c, _ in caps], [n for _, n in caps], "capability")
            config["capabilities"] = [c for c, _ in caps]
        if "network" in got:
            hosts = v.strings(_value(got["network"]))
            self._no_duplicates([h for h, _ in hosts], [n for _, n in hosts], "host")
            config["network_access"] = [h for h, _ in hosts]
        if "apis" in got:
            apis = v.strings(_value(got["apis"]))
            for url, node in apis:
                if not url.startswith("https://"):
                    rep.error(
                        "value", f"{url!r} is not an https:// URL", node.span, "external APIs are called over TLS"
                    )
            config["external_apis"] = [u for u, _ in apis]
        if "filesystem" in got:
            config["filesystem_access"] = self._filesystem(_value(got["filesystem"]))
        if "workload" in got:
            config["workload"] = self._workload(_value(got["workload"]))
        if "memory" in got:
            name = self._ref(_value(got["memory"]), self.program.blocks, "memory", key=lambda s: ("memory", s))
            if name is not None:
                block = self.program.blocks[("memory", name)]
                config["memory"] = self._quiet(lambda: self._memory(block))
        self._with_blocks(agent, config)
        policies = self._agent_policies(agent, got, aid)
        if policies:
            config["policies"] = policies
        schedules: list[dict[str, Any]] = []
        for (kind, _), block in self.program.blocks.items():
            if kind == "schedule" and _refers_to(block, agent.name):
                spec = self._quiet(partial(self._schedule, block))
                if spec is not None:
                    schedules.append(spec)
        if schedules:
            config["schedules"] = [{k: val for k, val in s.items() if k != "agent"} for s in schedules]
        return config if len(rep.diagnostics) == before else None

    def _quiet(self, fn: Callable[[], Any]) -> Any:
        """Run a check whose problems were already reported (by the file-wide pass) without repeating them."""
        saved = list(self.rep.diagnostics)
        try:
            return fn()
        finally:
            self.rep.diagnostics[:] = saved

    def _no_duplicates(self, values: list[str], nodes: list[A.Expr], what: str) -> None:
        seen: set[str] = set()
        for value, node in zip(values, nodes, strict=True):
            if value in seen:
                self.rep.error("duplicate", f"{what} {value!r} is listed twice", node.span)
            seen.add(value)

    def _filesystem(self, e: A.Expr) -> list[dict[str, str]]:
        if not isinstance(e, A.Array):
            self.v._bad(e, 'a list of records like {path: "/data", mode: "read"}')
            return []
        out: list[dict[str, str]] = []
        for item in e.items:
            if not isinstance(item, A.Record):
                self.v._bad(item, 'a record like {path: "/data", mode: "read"}')
                continue
            fields = dict(item.fields)
            for key in fields:
                if key not in ("path", "mode"):
                    self.rep.error("unknown_key", f"unknown key {key!r} in a filesystem entry", item.span)
            path = self.v.string(fields["path"]) if "path" in fields else None
            if "path" not in fields:
                self.rep.error("missing", "a filesystem entry needs a path", item.span)
            elif path is not None and (not path.startswith("/") or "/../" in f"{path}/"):
                self.rep.error("value", f"{path!r} must be an absolute path without '..'", fields["path"].span)
            mode = self.v.word(fields["mode"], FS_MODES, "mode") if "mode" in fields else "read"
            if path is not None and mode is not None:
                out.append({"path": path, "mode": mode})
        return out

    def _workload(self, e: A.Expr) -> dict[str, Any] | None:
        if not isinstance(e, A.Record):
            self.v._bad(e, 'a record like {image: "symbi/worker:1", command: ["run"]}')
            return None
        entries = [A.Entry(k, val, span=val.span) for k, val in e.fields]
        got = _entries(self.rep, entries, WORKLOAD_KEYS, "workload")
        out: dict[str, Any] = {}
        if "image" not in got:
            self.rep.error("missing", "a workload needs an image", e.span, 'add image: "registry/name:tag"')
        else:
            out["image"] = self.v.string(_value(got["image"]))
        if "command" in got:
            out["command"] = [s for s, _ in self.v.strings(_value(got["command"]))]
        if "workdir" in got:
            out["workdir"] = self.v.string(_value(got["workdir"]))
        if "env" in got:
            env = _value(got["env"])
            if not isinstance(env, A.Record):
                self.v._bad(env, 'a record like {LOG_LEVEL: "info"}')
            else:
                out["env"] = {k: s for k, val in env.fields if (s := self.v.string(val)) is not None}
        if "actions" in got:
            # Opt-in to the action gateway: stdin becomes the reply channel for `@symbi` requests on stderr.
            actions = self.v.boolean(_value(got["actions"]))
            if actions is not None:
                out["actions"] = actions
        return out

    def _with_blocks(self, agent: A.Agent, config: dict[str, Any]) -> None:
        resources: dict[str, Any] = {}
        seen: dict[str, A.Entry] = {}
        for block in (i for i in agent.items if isinstance(i, A.With)):
            for entry in block.settings:
                if entry.key not in WITH_KEYS:
                    hint = _did_you_mean(entry.key, WITH_KEYS) or f"known settings: {', '.join(WITH_KEYS)}"
                    self.rep.error("unknown_key", f"unknown setting {entry.key!r} in with", _key_span(entry), hint)
                    continue
                if entry.key in seen:
                    self.rep.error(
                        "duplicate",
                        f"{entry.key!r} is set twice (first on line {seen[entry.key].span.line})",
                        _key_span(entry),
                    )
                    continue
                seen[entry.key] = entry
                value = _value(entry)
                match entry.key:
                    case "sandbox":
                        tier = self.v.word(value, tuple(TIERS), "sandbox")
                        if tier is not None:
                            config["security_tier"] = TIERS[tier]
                    case "timeout":
                        resources["execution_timeout_s"] = self.v.duration(value, EXECUTION_TIMEOUT_S)
                    case "memory":
                        size = self.v.size(value, (MEMORY_MB[0] * 2**20, MEMORY_MB[1] * 2**20))
                        if size is not None:
                            binary = isinstance(value, A.Quantity) and "i" in value.text
                            resources["memory_mb"] = round(size / (2**20 if binary else 1_000_000))
                    case "cpu":
                        resources["cpu_cores"] = self.v.number(value, CPU_CORES, "cores")
                    case "disk_io":
                        n = self.v.number(value, DISK_IO_MBPS, "MB/s")
                        resources["disk_io_mbps"] = int(n) if n is not None else None
                    case "network_io":
                        n = self.v.number(value, NETWORK_IO_MBPS, "MB/s")
                        resources["network_io_mbps"] = int(n) if n is not None else None
        resources = {k: val for k, val in resources.items() if val is not None}
        if resources:
            config["resources"] = resources

    def _agent_policies(self, agent: A.Agent, got: dict[str, A.Entry], agent_id: str) -> list[dict[str, str]]:
        chosen: list[A.Policy] = []
        names: set[str] = set()
        for item in agent.items:
            if isinstance(item, A.Policy):
                if item.name in names:
                    self.rep.error("duplicate", f"policy {item.name!r} is defined twice", _name_span(item))
                names.add(item.name)
                chosen.append(item)
        if "policies" in got:
            refs = _value(got["policies"])
            if not isinstance(refs, A.Array):
                self.v._bad(refs, "a list of policy names")
            else:
                for ref in refs.items:
                    name = self._ref(ref, self.program.policies, "policy")
                    if name is None:
                        continue
                    if name in names:
                        self.rep.error("duplicate", f"policy {name!r} is used twice by agent {agent.name}", ref.span)
                        continue
                    names.add(name)
                    chosen.append(self.program.policies[name])
        out: list[dict[str, str]] = []
        for policy in chosen:
            top_level = self.program.policies.get(policy.name) is policy
            compile_it = partial(compile_policy, policy, agent_id=agent_id, reporter=self.rep, describe="policy")
            # A top-level policy was already checked (and its problems reported) by the file-wide pass.
            compiled = self._quiet(compile_it) if top_level else compile_it()
            if compiled is not None:
                out.append({"name": policy.name, "cedar": compiled[0], "source": _source(self.rep.source, policy)})
        return out


def _refers_to(block: A.Block, agent: str) -> bool:
    return any(
        e.key == "agent"
        and isinstance(e.value, A.Name | A.Literal_)
        and (getattr(e.value, "id", None) == agent or getattr(e.value, "value", None) == agent)
        for e in block.entries
    )


def _name_span(node: Any) -> A.Span:
    """Where a declaration's name is (its first character when the parser did not record the name)."""
    named: A.Span = getattr(node, "name_span", A.NO_SPAN)
    if named.line:
        return named
    s = node.span
    return A.Span(s.line, s.column, s.line, s.column + 1)


def _source(source: str, node: Any) -> str:
    s = node.span
    if not s.line:
        return ""
    lines = source.splitlines()[s.line - 1 : s.end_line]
    if not lines:
        return ""
    lines[-1] = lines[-1][: s.end_column - 1]
    lines[0] = lines[0][s.column - 1 :]
    return "\n".join(lines)


def _valid_cron(expr: str) -> bool:
    if len(expr.split()) not in (5, 6):
        return False
    try:
        return bool(croniter.is_valid(expr))
    except Exception:  # croniter raises a variety of errors for garbage
        return False


def _valid_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
        return True
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False


# --- entry points ----------------------------------------------------------------------------------


def check_module(module: A.Module, source: str, file: str = DEFAULT_FILE) -> Program:
    """Check everything in ``module``; :class:`DslError` with every problem, else the program."""
    rep = Reporter(source, file)
    checker = Checker(module, rep)
    try:
        checker.collect()
        checker.check_declarations()
        for agent in checker.program.agents.values():
            config = checker.agent_config(agent)
            if config is not None:
                checker.program.configs[agent.name] = config
    except RecursionError:
        rep.error("too_deep", "the definition nests too deeply to process", A.Span(1, 1, 1, 2))
    rep.raise_if_any()
    return checker.program


def check(source: str, file: str = DEFAULT_FILE) -> Program:
    """Parse and check ``source``; :class:`DslError` with every problem found."""
    return check_module(parse(source, file), source, file)


def compile_agent(
    source: str, *, agent_id: str | None = None, agent: str | None = None, file: str = DEFAULT_FILE
) -> dict[str, Any]:
    """The configuration (a dict shaped like ``AgentConfig``) of the one agent in ``source``.

    ``agent`` picks one when the file defines several; policies are compiled for principal
    ``Agent::"<agent_id>"`` (default: the agent's name). :class:`DslError` with every problem otherwise.
    """
    program = check(source, file)
    rep = Reporter(source, file)
    names = list(program.agents)
    if agent is None and len(names) != 1:
        message = "the file defines no agent" if not names else f"the file defines {len(names)} agents"
        rep.error("agent", message, A.Span(1, 1, 1, 2), "register a file with exactly one agent, or name the agent")
        rep.raise_if_any()
    chosen = agent or names[0]
    if chosen not in program.agents:
        rep.error("undefined", f"agent {chosen!r} is not defined in this file", A.Span(1, 1, 1, 2))
        rep.raise_if_any()
    checker = Checker(program.module, rep)
    try:
        checker.collect()
        config = checker.agent_config(program.agents[chosen], agent_id)
    except RecursionError:
        rep.error("too_deep", "the definition nests too deeply to process", A.Span(1, 1, 1, 2))
    rep.raise_if_any()
    assert config is not None
    return config
