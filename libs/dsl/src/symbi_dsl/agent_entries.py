"""The per-key parsers of an agent's entries: ``filesystem``, ``workload``, ``budget``, ``quota`` and ``secrets``,
each compiled to its part of ``symbi_contracts.lifecycle.config.AgentConfig`` with every problem reported where it is.

:mod:`symbi_dsl.agents` assembles an agent's configuration from them (``mcp_servers``: :mod:`symbi_dsl.tool_servers`).
"""

from __future__ import annotations

from typing import Any

from symbi_contracts.grant_paths import grant_path_problem
from symbi_contracts.lifecycle.config import CPU_CORES

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import Reporter
from symbi_dsl.values import Values, keyed_entries, value_of

FS_MODES = ("read", "read_write")
WORKLOAD_KEYS = ("image", "command", "env", "workdir", "actions")
#: An agent's model budget per day (docs/models.md): tokens, and money in US dollars (stored in micro-dollars).
BUDGET_KEYS = ("tokens_per_day", "usd_per_day")
QUOTA_KEYS = ("concurrent_tasks", "cpu_seconds_per_day")
#: At most a day of the largest agent's cores (symbi_lifecycle.config applies the same bound).
MAX_CPU_SECONDS_PER_DAY = 86_400 * CPU_CORES[1]


def no_duplicates(rep: Reporter, values: list[str], nodes: list[A.Expr], what: str) -> None:
    """Report each value listed a second time, at its second node."""
    seen: set[str] = set()
    for value, node in zip(values, nodes, strict=True):
        if value in seen:
            rep.error("duplicate", f"{what} {value!r} is listed twice", node.span)
        seen.add(value)


def filesystem(rep: Reporter, v: Values, e: A.Expr) -> list[dict[str, str]]:
    """``filesystem``: the paths (grant paths, docs/grants.md) the agent may read or write, and how."""
    if not isinstance(e, A.Array):
        v._bad(e, 'a list of records like {path: "/data", mode: "read"}')
        return []
    out: list[dict[str, str]] = []
    for item in e.items:
        if not isinstance(item, A.Record):
            v._bad(item, 'a record like {path: "/data", mode: "read"}')
            continue
        fields = dict(item.fields)
        for key in fields:
            if key not in ("path", "mode"):
                rep.error("unknown_key", f"unknown key {key!r} in a filesystem entry", item.span)
        path = v.string(fields["path"]) if "path" in fields else None
        if "path" not in fields:
            rep.error("missing", "a filesystem entry needs a path", item.span)
        elif path is not None and (problem := grant_path_problem(path)) is not None:
            rep.error("value", problem, fields["path"].span)
        mode = v.word(fields["mode"], FS_MODES, "mode") if "mode" in fields else "read"
        if path is not None and mode is not None:
            out.append({"path": path, "mode": mode})
    return out


def workload(rep: Reporter, v: Values, e: A.Expr) -> dict[str, Any] | None:
    """``workload``: the image the agent runs, its command, environment, working directory, actions opt-in."""
    if not isinstance(e, A.Record):
        v._bad(e, 'a record like {image: "symbi/worker:1", command: ["run"]}')
        return None
    entries = [A.Entry(k, val, span=val.span) for k, val in e.fields]
    got = keyed_entries(rep, entries, WORKLOAD_KEYS, "workload")
    out: dict[str, Any] = {}
    if "image" not in got:
        rep.error("missing", "a workload needs an image", e.span, 'add image: "registry/name:tag"')
    else:
        out["image"] = v.string(value_of(got["image"]))
    if "command" in got:
        out["command"] = [s for s, _ in v.strings(value_of(got["command"]))]
    if "workdir" in got:
        out["workdir"] = v.string(value_of(got["workdir"]))
    if "env" in got:
        env = value_of(got["env"])
        if not isinstance(env, A.Record):
            v._bad(env, 'a record like {LOG_LEVEL: "info"}')
        else:
            out["env"] = {k: s for k, val in env.fields if (s := env_value(v, val)) is not None}
    if "actions" in got:
        # Opt-in to the action gateway: stdin becomes the reply channel for `@symbi` requests on stderr.
        actions = v.boolean(value_of(got["actions"]))
        if actions is not None:
            out["actions"] = actions
    return out


def budget(rep: Reporter, v: Values, e: A.Expr) -> dict[str, int]:
    """``budget``: the agent's model budget per day (tokens, and US dollars stored as micro-dollars)."""
    if not isinstance(e, A.Record):
        v._bad(e, "a record like {tokens_per_day: 200000, usd_per_day: 5}")
        return {}
    entries = [A.Entry(k, val, span=val.span) for k, val in e.fields]
    got = keyed_entries(rep, entries, BUDGET_KEYS, "budget")
    out: dict[str, int] = {}
    if "tokens_per_day" in got:
        tokens = v.number(value_of(got["tokens_per_day"]), (0, 1e15), "tokens")
        if tokens is not None:
            out["tokens_per_day"] = int(tokens)
    if "usd_per_day" in got:
        usd = v.number(value_of(got["usd_per_day"]), (0, 1e9), "USD")
        if usd is not None:
            out["micro_usd_per_day"] = round(usd * 1_000_000)
    return out


def quota(rep: Reporter, v: Values, e: A.Expr) -> dict[str, float]:
    """``quota``: the agent's quotas beyond one task (docs/policy.md, "Quotas")."""
    if not isinstance(e, A.Record):
        v._bad(e, "a record like {concurrent_tasks: 2, cpu_seconds_per_day: 3600}")
        return {}
    entries = [A.Entry(k, val, span=val.span) for k, val in e.fields]
    got = keyed_entries(rep, entries, QUOTA_KEYS, "quota")
    out: dict[str, float] = {}
    if "concurrent_tasks" in got:
        n = v.number(value_of(got["concurrent_tasks"]), (0, 10_000), "tasks")
        if n is not None:
            out["concurrent_tasks"] = int(n)
    if "cpu_seconds_per_day" in got:
        s = v.number(value_of(got["cpu_seconds_per_day"]), (0, MAX_CPU_SECONDS_PER_DAY), "CPU-seconds")
        if s is not None:
            out["cpu_seconds_per_day"] = s
    return out


def env_value(v: Values, e: A.Expr) -> str | None:
    """A string, or a ``vault://`` reference: the variable then holds the secret file's path, not its value."""
    return v.secret(e) if isinstance(e, A.Secret) else v.string(e)


def secrets(rep: Reporter, v: Values, e: A.Expr) -> list[str]:
    """``secrets``: the ``vault://`` secrets given to each task as files (docs/secrets.md), without the prefix."""
    if not isinstance(e, A.Array):
        v._bad(e, "a list of secret references like [vault://providers/openai/api_key]")
        return []
    refs = [(ref, item) for item in e.items if (ref := v.secret(item)) is not None]
    no_duplicates(rep, [r for r, _ in refs], [n for _, n in refs], "secret")
    return [r.removeprefix("vault://") for r, _ in refs]
