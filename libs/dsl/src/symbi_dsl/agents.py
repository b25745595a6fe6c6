"""An agent's configuration: its entries, ``with`` settings, policies and the schedules that run it,
compiled to a ``dict`` shaped like ``symbi_contracts.lifecycle.config.AgentConfig``."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from symbi_contracts.grant_paths import grant_path_problem
from symbi_contracts.lifecycle.config import CPU_CORES, DISK_IO_MBPS, EXECUTION_TIMEOUT_S, MEMORY_MB, NETWORK_IO_MBPS

from symbi_dsl import ast as A
from symbi_dsl.blocks import BlockChecks
from symbi_dsl.body import AREAS, BUILTINS, STEPS_BOUNDS, body_of, has_body, unknown_calls
from symbi_dsl.cedar import compile_policy
from symbi_dsl.declarations import VERSION_RE
from symbi_dsl.literals import quantity
from symbi_dsl.tool_servers import mcp_servers
from symbi_dsl.values import did_you_mean, key_span, keyed_entries, name_span, value_of

TIERS = {"tier1": "tier1", "tier2": "tier2", "auto": "auto", "docker": "tier1", "runc": "tier1", "gvisor": "tier2"}
#: Sandboxes Symbiont knows that Symbi does not have.
OTHER_TIERS = ("tier3", "firecracker", "e2b")
FS_MODES = ("read", "read_write")
_QUANTITY_RE = re.compile(r"^\d+(\.\d+)?\.?(ms|s|m|h|d|w|milliseconds?|seconds?|minutes?|hours?|days?|weeks?)$")
_CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
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
    "budget",
    "secrets",
    "quota",
    "mcp_servers",
)
WITH_KEYS = ("sandbox", "timeout", "memory", "cpu", "disk_io", "network_io", "steps")
#: Symbiont's spellings of ours.
WITH_ALIASES = {"max_memory_mb": "memory", "max_cpu_cores": "cpu"}
#: Settings Symbiont's agents use that Symbi has no counterpart for (named as not honoured, never a typo).
SYMBIONT_SETTINGS = ("privacy", "security", "network_policy", "coordination", "requires", "encryption")
WORKLOAD_KEYS = ("image", "command", "env", "workdir", "actions")
#: An agent's model budget per day (docs/models.md): tokens, and money in US dollars (stored in micro-dollars).
BUDGET_KEYS = ("tokens_per_day", "usd_per_day")
QUOTA_KEYS = ("concurrent_tasks", "cpu_seconds_per_day")
#: At most a day of the largest agent's cores (symbi_lifecycle.config applies the same bound).
MAX_CPU_SECONDS_PER_DAY = 86_400 * CPU_CORES[1]


def config_name(name: str) -> str:
    """The configuration name of a DSL agent name (``data_pipeline`` → ``data-pipeline``)."""
    return name.replace("_", "-").lower()


class Checker(BlockChecks):
    """Checks one module, collecting every problem into the reporter; also compiles its agents."""

    def agent_config(self, agent: A.Agent, agent_id: str | None = None) -> dict[str, Any] | None:
        """The configuration ``agent`` compiles to (policies named for ``agent_id``); None after errors."""
        before = len(self.rep.errors)
        rep, v = self.rep, self.v
        self._params(agent.params)
        if agent.returns is not None:
            self.check_type(agent.returns)
        for f in (i for i in agent.items if isinstance(i, A.Function)):
            self._params(f.params)
            if f.returns is not None:
                self.check_type(f.returns)
        aid = agent_id or agent.name
        entries = [i for i in agent.items if isinstance(i, A.Entry)]
        got = keyed_entries(rep, entries, AGENT_KEYS, f"agent {agent.name}", nested=())
        meta = self.program.metadata
        config: dict[str, Any] = {"name": config_name(agent.name)}
        version = v.string(value_of(got["version"])) if "version" in got else meta.get("version")
        if version is not None:
            if VERSION_RE.match(version):
                config["version"] = version
            elif "version" in got:
                rep.warn(
                    "value",
                    f"version should be like 1.2.3, got {version!r}; it is ignored",
                    value_of(got["version"]).span,
                )
        description = v.string(value_of(got["description"])) if "description" in got else meta.get("description")
        if description is not None:
            config["description"] = description
        if "capabilities" in got:
            caps = v.strings(value_of(got["capabilities"]), names_ok=True)
            for cap, node in caps:
                if not _CAPABILITY_RE.match(cap):
                    rep.error("value", f"{cap!r} is not a capability name", node.span, "e.g. web.fetch or data.read")
            self._no_duplicates([c for c, _ in caps], [n for _, n in caps], "capability")
            config["capabilities"] = [c for c, _ in caps]
        if "network" in got:
            hosts = v.strings(value_of(got["network"]))
            self._no_duplicates([h for h, _ in hosts], [n for _, n in hosts], "host")
            config["network_access"] = [h for h, _ in hosts]
        if "apis" in got:
            apis = v.strings(value_of(got["apis"]))
            for url, node in apis:
                if not url.startswith("https://"):
                    rep.error(
                        "value", f"{url!r} is not an https:// URL", node.span, "external APIs are called over TLS"
                    )
            config["external_apis"] = [u for u, _ in apis]
        if "filesystem" in got:
            config["filesystem_access"] = self._filesystem(value_of(got["filesystem"]))
        if "workload" in got:
            config["workload"] = self._workload(value_of(got["workload"]))
        if "budget" in got:
            config["budget"] = self._budget(value_of(got["budget"]))
        if "secrets" in got:  # runtime secrets, given to each task as files (docs/secrets.md)
            config["secrets"] = self._secrets(value_of(got["secrets"]))
        if "mcp_servers" in got:  # the MCP servers it uses (docs/tools.md): Symbi's key, Symbiont has none
            config["mcp_servers"] = mcp_servers(self.rep, self.v, value_of(got["mcp_servers"]))
        if "quota" in got:  # quotas beyond one task (docs/policy.md, "Quotas")
            config["quota"] = self._quota(value_of(got["quota"]))
        if "memory" in got:
            name = self._ref(value_of(got["memory"]), self.program.blocks, "memory", key=lambda s: ("memory", s))
            if name is not None:
                block = self.program.blocks[("memory", name)]
                config["memory"] = self._quiet(lambda: self._memory(block))
        self._with_blocks(agent, config)
        if "workload" in got and has_body(agent):
            self._workload_and_body(agent, got["workload"])
        if "workload" not in got and has_body(agent):  # Symbi runs the body: what it calls must exist
            for call in unknown_calls(self.module, agent):
                hint = f"Symbi's builtins: {', '.join(AREAS)} (e.g. memory.store), {', '.join(BUILTINS)}"
                rep.warn("unsupported", f"the body calls {call.id}(), which Symbi does not provide", call.span, hint)
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
        return config if len(rep.errors) == before else None

    def _workload_and_body(self, agent: A.Agent, workload: A.Entry) -> None:
        """Refuse an agent with both a workload and a body: only one can run, and running the workload while the
        body (what a Symbiont definition says the agent does) is dropped would be a silent surprise."""
        first = body_of(agent)[0]
        line = getattr(first, "span", A.NO_SPAN).line
        at = f" (line {line})" if line else ""
        self.rep.error(
            "conflict",
            f"agent {agent.name} has both a workload and a body{at}; only one of them can run",
            key_span(workload),
            "remove the workload to run the body (in the agent image), or empty the with block to run the workload",
        )

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
            elif path is not None and (problem := grant_path_problem(path)) is not None:
                self.rep.error("value", problem, fields["path"].span)
            mode = self.v.word(fields["mode"], FS_MODES, "mode") if "mode" in fields else "read"
            if path is not None and mode is not None:
                out.append({"path": path, "mode": mode})
        return out

    def _workload(self, e: A.Expr) -> dict[str, Any] | None:
        if not isinstance(e, A.Record):
            self.v._bad(e, 'a record like {image: "symbi/worker:1", command: ["run"]}')
            return None
        entries = [A.Entry(k, val, span=val.span) for k, val in e.fields]
        got = keyed_entries(self.rep, entries, WORKLOAD_KEYS, "workload")
        out: dict[str, Any] = {}
        if "image" not in got:
            self.rep.error("missing", "a workload needs an image", e.span, 'add image: "registry/name:tag"')
        else:
            out["image"] = self.v.string(value_of(got["image"]))
        if "command" in got:
            out["command"] = [s for s, _ in self.v.strings(value_of(got["command"]))]
        if "workdir" in got:
            out["workdir"] = self.v.string(value_of(got["workdir"]))
        if "env" in got:
            env = value_of(got["env"])
            if not isinstance(env, A.Record):
                self.v._bad(env, 'a record like {LOG_LEVEL: "info"}')
            else:
                out["env"] = {k: s for k, val in env.fields if (s := self._env_value(val)) is not None}
        if "actions" in got:
            # Opt-in to the action gateway: stdin becomes the reply channel for `@symbi` requests on stderr.
            actions = self.v.boolean(value_of(got["actions"]))
            if actions is not None:
                out["actions"] = actions
        return out

    def _budget(self, e: A.Expr) -> dict[str, int]:
        if not isinstance(e, A.Record):
            self.v._bad(e, "a record like {tokens_per_day: 200000, usd_per_day: 5}")
            return {}
        entries = [A.Entry(k, val, span=val.span) for k, val in e.fields]
        got = keyed_entries(self.rep, entries, BUDGET_KEYS, "budget")
        out: dict[str, int] = {}
        if "tokens_per_day" in got:
            tokens = self.v.number(value_of(got["tokens_per_day"]), (0, 1e15), "tokens")
            if tokens is not None:
                out["tokens_per_day"] = int(tokens)
        if "usd_per_day" in got:
            usd = self.v.number(value_of(got["usd_per_day"]), (0, 1e9), "USD")
            if usd is not None:
                out["micro_usd_per_day"] = round(usd * 1_000_000)
        return out

    def _quota(self, e: A.Expr) -> dict[str, float]:
        if not isinstance(e, A.Record):
            self.v._bad(e, "a record like {concurrent_tasks: 2, cpu_seconds_per_day: 3600}")
            return {}
        entries = [A.Entry(k, val, span=val.span) for k, val in e.fields]
        got = keyed_entries(self.rep, entries, QUOTA_KEYS, "quota")
        out: dict[str, float] = {}
        if "concurrent_tasks" in got:
            n = self.v.number(value_of(got["concurrent_tasks"]), (0, 10_000), "tasks")
            if n is not None:
                out["concurrent_tasks"] = int(n)
        if "cpu_seconds_per_day" in got:
            s = self.v.number(value_of(got["cpu_seconds_per_day"]), (0, MAX_CPU_SECONDS_PER_DAY), "CPU-seconds")
            if s is not None:
                out["cpu_seconds_per_day"] = s
        return out

    def _env_value(self, e: A.Expr) -> str | None:
        """A string, or a ``vault://`` reference: the variable then holds the secret file's path, not its value."""
        return self.v.secret(e) if isinstance(e, A.Secret) else self.v.string(e)

    def _secrets(self, e: A.Expr) -> list[str]:
        if not isinstance(e, A.Array):
            self.v._bad(e, "a list of secret references like [vault://providers/openai/api_key]")
            return []
        refs = [(ref, item) for item in e.items if (ref := self.v.secret(item)) is not None]
        self._no_duplicates([r for r, _ in refs], [n for _, n in refs], "secret")
        return [r.removeprefix("vault://") for r, _ in refs]

    def _with_blocks(self, agent: A.Agent, config: dict[str, Any]) -> None:
        resources: dict[str, Any] = {}
        seen: dict[str, A.Entry] = {}
        for block in (i for i in agent.items if isinstance(i, A.With)):
            for entry in block.settings:
                key = WITH_ALIASES.get(entry.key, entry.key)
                if key not in WITH_KEYS:
                    close = "" if entry.key in SYMBIONT_SETTINGS else did_you_mean(entry.key, WITH_KEYS)
                    if close:  # a near miss of ours is a typo
                        self.rep.error("unknown_key", f"unknown setting {entry.key!r} in with", key_span(entry), close)
                    else:  # Symbiont reads any setting: one Symbi lacks is named, not dropped silently
                        message = f"the setting {entry.key!r} is not honoured by Symbi"
                        self.rep.warn("unsupported", message, key_span(entry), f"known: {', '.join(WITH_KEYS)}")
                    continue
                if key == "memory" and _word(value_of(entry)) is not None:
                    self._memory_mode(value_of(entry))
                    continue
                if key in seen:
                    first = seen[key].span.line
                    self.rep.warn(
                        "duplicate", f"{key!r} is set twice (first on line {first}, which counts)", key_span(entry)
                    )
                    continue
                seen[key] = entry
                value = value_of(entry)
                if entry.key in WITH_ALIASES and isinstance(value, A.Literal_) and value.kind in ("int", "float"):
                    unit = "MB" if key == "memory" else ""
                    value = _at(quantity(f"{value.value}{unit}"), value.span) if unit else value
                match key:
                    case "sandbox":
                        self._sandbox(value, config)
                    case "timeout":
                        resources["execution_timeout_s"] = self.v.duration(
                            self._lenient_duration(value), EXECUTION_TIMEOUT_S
                        )
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
                    case "steps":  # the body's step budget (symbi_dsl.body reads it when it runs)
                        if isinstance(value, A.Literal_) and value.kind == "float":
                            self.v._bad(value, "a whole number of steps")
                        else:
                            self.v.number(value, STEPS_BOUNDS, "steps")
        resources = {k: val for k, val in resources.items() if val is not None}
        if resources:
            config["resources"] = resources

    def _memory_mode(self, value: A.Expr) -> None:
        """Symbiont's ``memory = "ephemeral" | "persistent" | …``: a mode, not a size."""
        word = _word(value)
        if word == "ephemeral":
            self.rep.warn("value", "sandbox memory is ephemeral anyway; write a size like 512MB", value.span)
            return
        hint = "declare a memory block and name it with memory = … in the agent"
        self.rep.warn("unsupported", f"memory = {word!r} is not honoured by Symbi", value.span, hint)

    def _sandbox(self, value: A.Expr, config: dict[str, Any]) -> None:
        word = _word(value)
        if word is not None and word.lower() in OTHER_TIERS:
            tiers = ", ".join(TIERS)
            self.rep.warn("unsupported", f"Symbi has no {word} sandbox", value.span, f"one of {tiers}")
            return
        if word is not None and word not in TIERS and word.lower() in TIERS:
            self.rep.warn("value", f"write the sandbox as {word.lower()}", value.span)
            word = word.lower()
            value = A.Name(word, span=value.span)
        tier = self.v.word(value, tuple(TIERS), "sandbox")
        if tier is not None:
            config["security_tier"] = TIERS[tier]

    def _lenient_duration(self, value: A.Expr) -> A.Expr:
        """Symbiont's timeouts: ``"30s"`` as a string, or a number of milliseconds (warned, then read)."""
        if isinstance(value, A.Literal_) and value.kind == "string" and _QUANTITY_RE.match(str(value.value)):
            self.rep.warn("type", "write the duration without quotes", value.span, str(value.value))
            return _at(quantity(str(value.value)), value.span)
        if isinstance(value, A.Literal_) and value.kind == "int":
            self.rep.warn(
                "type", f"a bare number is read as milliseconds: {value.value}ms", value.span, "write 30s, 5m …"
            )
            return _at(quantity(f"{value.value}ms"), value.span)
        return value

    def _agent_policies(self, agent: A.Agent, got: dict[str, A.Entry], agent_id: str) -> list[dict[str, str]]:
        chosen: list[A.Policy] = []
        names: set[str] = set()
        for item in agent.items:
            if isinstance(item, A.Policy):
                if item.name in names:
                    self.rep.error("duplicate", f"policy {item.name!r} is defined twice", name_span(item))
                names.add(item.name)
                chosen.append(item)
        if "policies" in got:
            refs = value_of(got["policies"])
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


def _at(q: A.Quantity, span: A.Span) -> A.Quantity:
    return A.Quantity(q.text, q.kind, q.value, span=span)


def _word(value: A.Expr) -> str | None:
    if isinstance(value, A.Name):
        return value.id
    return str(value.value) if isinstance(value, A.Literal_) and value.kind == "string" else None


def _refers_to(block: A.Block, agent: str) -> bool:
    return any(
        isinstance(e, A.Entry)
        and e.key == "agent"
        and isinstance(e.value, A.Name | A.Literal_)
        and (getattr(e.value, "id", None) == agent or getattr(e.value, "value", None) == agent)
        for e in block.entries
    )


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
