"""An agent's configuration: its entries, ``with`` settings, policies and the schedules that run it,
compiled to a ``dict`` shaped like ``symbi_contracts.lifecycle.config.AgentConfig``.

The per-key parsers are in :mod:`symbi_dsl.agent_entries`, :mod:`symbi_dsl.tool_servers` (``mcp_servers``) and
:mod:`symbi_dsl.with_settings` (``with`` blocks); this module assembles them into one agent's configuration."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from symbi_contracts.lifecycle.config import CAPABILITY_RE, DNS_LABEL_RE, VERSION_RE

from symbi_dsl import agent_entries
from symbi_dsl import ast as A
from symbi_dsl.blocks import BlockChecks
from symbi_dsl.body import AREAS, BUILTINS, body_of, has_body, unknown_calls
from symbi_dsl.cedar import compile_policy
from symbi_dsl.tool_servers import mcp_servers
from symbi_dsl.values import key_span, keyed_entries, name_span, value_of
from symbi_dsl.with_settings import with_settings

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


def config_name(name: str) -> str:
    """The configuration name of a DSL agent name (``data_pipeline`` → ``data-pipeline``)."""
    return name.replace("_", "-").lower()


class Checker(BlockChecks):
    """Checks one module, collecting every problem into the reporter; also compiles its agents."""

    def agent_config(self, agent: A.Agent, agent_id: str | None = None) -> dict[str, Any] | None:
        """The configuration ``agent`` compiles to (policies named for ``agent_id``); None after errors."""
        before = self.rep.error_count
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
        if not DNS_LABEL_RE.match(config["name"]):
            rep.warn(
                "unsupported",
                f"agent {agent.name} cannot be registered: its configuration name {config['name']!r} must be 1-63 "
                "lowercase letters, digits or '-', not starting or ending in '-' ('_' becomes '-')",
                agent.name_span,
                "start and end the name with a letter or digit, and keep it to 63 characters",
            )
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
                if not CAPABILITY_RE.match(cap):
                    rep.error("value", f"{cap!r} is not a capability name", node.span, "e.g. web.fetch or data.read")
            agent_entries.no_duplicates(rep, [c for c, _ in caps], [n for _, n in caps], "capability")
            config["capabilities"] = [c for c, _ in caps]
        if "network" in got:
            hosts = v.strings(value_of(got["network"]))
            agent_entries.no_duplicates(rep, [h for h, _ in hosts], [n for _, n in hosts], "host")
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
            config["filesystem_access"] = agent_entries.filesystem(rep, v, value_of(got["filesystem"]))
        if "workload" in got:
            config["workload"] = agent_entries.workload(rep, v, value_of(got["workload"]))
        if "budget" in got:
            config["budget"] = agent_entries.budget(rep, v, value_of(got["budget"]))
        if "secrets" in got:  # runtime secrets, given to each task as files (docs/secrets.md)
            config["secrets"] = agent_entries.secrets(rep, v, value_of(got["secrets"]))
        if "mcp_servers" in got:  # the MCP servers it uses (docs/tools.md): Symbi's key, Symbiont has none
            config["mcp_servers"] = mcp_servers(self.rep, self.v, value_of(got["mcp_servers"]))
        if "quota" in got:  # quotas beyond one task (docs/policy.md, "Quotas")
            config["quota"] = agent_entries.quota(rep, v, value_of(got["quota"]))
        if "memory" in got:
            name = self._ref(value_of(got["memory"]), self.program.blocks, "memory", key=lambda s: ("memory", s))
            if name is not None:
                block = self.program.blocks[("memory", name)]
                config["memory"] = self._quiet(lambda: self._memory(block))
        with_settings(rep, v, agent, config)
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
        return config if rep.error_count == before else None

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
        with self.rep.quiet():
            return fn()

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
