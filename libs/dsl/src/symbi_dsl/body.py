"""An agent's body as the sandbox runs it. Pure.

What runs: the statements of the agent's ``with`` blocks, in order, with its ``function`` definitions (and the
file's top-level ones) callable, its parameters bound from the task's input. With what: a budget of steps (the
``with`` setting ``steps``, default :data:`DEFAULT_STEPS`) and of wall time (a little less than the agent's
``timeout``, so the body's error is reported before the sandbox is killed; :data:`DEFAULT_SECONDS` without
one). How the definition reaches the sandbox: its text, cut in pieces, in the workload's environment — part
of the agent's configuration, so it is decided, signed and recorded with the rest of it at registration.

The runner in the sandbox is ``python3 -m symbi_agent.dsl_run`` (the agent SDK's, in the agent base image
built by ``deploy/host/agent-image.sh``); :func:`runner_workload` is the workload an agent with a body and no
``workload`` of its own is registered with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from symbi_dsl import ast as A

RUNNER_COMMAND = ("python3", "-m", "symbi_agent.dsl_run")
#: The agent base image (``deploy/host/agent-image.sh``'s default tag): Python, the SDK, the DSL runner.
DEFAULT_RUNNER_IMAGE = "symbi/agent-python:1"
FILE_ENV = "SYMBI_DSL_FILE"
AGENT_ENV = "SYMBI_DSL_AGENT"
STEPS_ENV = "SYMBI_DSL_STEPS"
SECONDS_ENV = "SYMBI_DSL_SECONDS"
#: The definition's text is in ``SYMBI_DSL_SOURCE_000``, ``…_001``, … (a variable holds at most 4096 characters).
SOURCE_ENV = "SYMBI_DSL_SOURCE_"
CHUNK_CHARS = 4000
MAX_CHUNKS = 100
MAX_SOURCE_CHARS = CHUNK_CHARS * MAX_CHUNKS
DEFAULT_STEPS = 100_000
STEPS_BOUNDS = (1, 100_000_000)
DEFAULT_SECONDS = 60.0
#: Wall time kept back from the agent's timeout for starting Python and reporting the body's end.
STARTUP_MARGIN_S = 3.0


#: What a body can call besides its functions: the SDK's areas (``memory.store(…)``) and single names
#: (``symbi_agent.dsl_run`` maps each to an SDK action; Symbiont's spellings are aliases of ours).
AREAS = ("memory", "knowledge", "messages", "tools", "data", "http", "models")
BUILTINS = ("remember", "recall", "send", "log", "now", "invoke_tool", "memory_search", "memory_write", "send_to")


class BodyError(ValueError):
    """The body cannot be run as given (no such agent, a definition missing from the environment)."""


def has_body(agent: A.Agent) -> bool:
    """Whether the agent's ``with`` blocks hold any statement (then it runs its body, not a container)."""
    return any(isinstance(i, A.With) and i.body for i in agent.items)


def body_of(agent: A.Agent) -> tuple[A.Stmt, ...]:
    """The statements to run: those of every ``with`` block of the agent, in order."""
    return tuple(s for i in agent.items if isinstance(i, A.With) for s in i.body)


def functions_of(module: A.Module, agent: A.Agent) -> list[A.Function]:
    """The functions the body may call: the file's top-level ones, then the agent's (which win)."""
    top = [i for i in module.items if isinstance(i, A.Function)]
    return top + [i for i in agent.items if isinstance(i, A.Function)]


def find_agent(module: A.Module, name: str | None) -> A.Agent:
    """The agent named ``name``, or the only one of the file."""
    agents = [i for i in module.items if isinstance(i, A.Agent)]
    if name:
        for agent in agents:
            if agent.name == name:
                return agent
        raise BodyError(f"the definition has no agent {name!r}")
    if len(agents) != 1:
        raise BodyError(f"the definition has {len(agents)} agents; name the one to run in ${AGENT_ENV}")
    return agents[0]


def steps_of(agent: A.Agent) -> int:
    """The step budget: the first ``steps = N`` setting of a ``with`` block, else :data:`DEFAULT_STEPS`."""
    for block in (i for i in agent.items if isinstance(i, A.With)):
        for entry in block.settings:
            value = entry.value
            if entry.key == "steps" and isinstance(value, A.Literal_) and value.kind == "int":
                assert isinstance(value.value, int)
                return value.value
    return DEFAULT_STEPS


def seconds_for(timeout_s: float | None) -> float:
    """The wall-time budget of a body whose sandbox is killed after ``timeout_s`` (None: the default)."""
    if timeout_s is None:
        return DEFAULT_SECONDS
    return max(1.0, min(timeout_s - STARTUP_MARGIN_S, timeout_s * 0.9))


def runner_env(source: str, *, file: str, agent: str, steps: int, seconds: float) -> dict[str, str]:
    """The environment that carries a definition to the runner; :class:`BodyError` past
    :data:`MAX_SOURCE_CHARS`."""
    if len(source) > MAX_SOURCE_CHARS:
        raise BodyError(f"the definition has {len(source)} characters; at most {MAX_SOURCE_CHARS} can be run")
    env = {FILE_ENV: file, AGENT_ENV: agent, STEPS_ENV: str(steps), SECONDS_ENV: f"{seconds:g}"}
    for i in range(0, max(len(source), 1), CHUNK_CHARS):
        env[f"{SOURCE_ENV}{i // CHUNK_CHARS:03d}"] = source[i : i + CHUNK_CHARS]
    return env


def runner_workload(
    source: str, *, file: str, agent: A.Agent, timeout_s: float | None, image: str = DEFAULT_RUNNER_IMAGE
) -> dict[str, Any]:
    """The workload (a dict shaped like ``Workload``) that runs ``agent``'s body in the sandbox, with actions."""
    env = runner_env(source, file=file, agent=agent.name, steps=steps_of(agent), seconds=seconds_for(timeout_s))
    return {"image": image, "command": list(RUNNER_COMMAND), "env": env, "actions": True}


def source_from_env(env: Mapping[str, str]) -> str:
    """The definition's text, put back together from the environment; :class:`BodyError` if it is missing."""
    pieces: list[str] = []
    while (piece := env.get(f"{SOURCE_ENV}{len(pieces):03d}")) is not None:
        pieces.append(piece)
    if not pieces:
        raise BodyError(f"no definition in the environment (${SOURCE_ENV}000 is not set)")
    return "".join(pieces)


def read_input(raw: bytes) -> Any:
    """The task's input as the body sees it: parsed JSON when it is JSON, else the text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def bind_params(params: Sequence[A.Param], value: Any) -> tuple[dict[str, Any], list[A.Param]]:
    """The body's variables from the input: ``input`` always; one parameter gets the whole input, several are
    the fields of a JSON object. Also the parameters left without a value (their defaults, if any, apply)."""
    env: dict[str, Any] = {"input": value}
    unbound: list[A.Param] = []
    if len(params) == 1:
        env[params[0].name] = value
        return env, unbound
    fields = value if isinstance(value, dict) else {}
    for p in params:
        if p.name in fields:
            env[p.name] = fields[p.name]
        else:
            unbound.append(p)
    return env, unbound


def render(value: Any) -> str:
    """The task's result: a string as it is, null as nothing, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=_opaque, ensure_ascii=False)


def _opaque(value: Any) -> str:
    """Functions and secret references have no JSON form; the result names them instead."""
    return f"<{type(value).__name__.lower()}>"


def unknown_calls(module: A.Module, agent: A.Agent) -> list[A.Name]:
    """The names the agent's body calls that nothing provides: no builtin, no function, no variable of the body
    (a variable may hold a lambda). Each would fail when reached; registration names them first."""
    bound = {p.name for p in agent.params} | {f.name for f in functions_of(module, agent)}
    calls: list[A.Name] = []
    roots: list[object] = [agent.items]
    while roots:
        node = roots.pop()
        if isinstance(node, tuple | list):
            roots.extend(node)
            continue
        match node:
            case A.Let() | A.Function() | A.Destructure():
                bound.add(node.name)
            case A.For():
                bound.add(node.var)
            case A.Lambda():
                bound.add(node.param)
            case A.Param():
                bound.add(node.name)
            case A.Catch() if node.name is not None:
                bound.add(node.name)
            case A.Assign() if isinstance(node.target, A.Name):
                bound.add(node.target.id)
            case A.Call() if isinstance(node.func, A.Name):
                calls.append(node.func)
        fields = getattr(node, "__dataclass_fields__", None)
        if fields and not isinstance(node, A.Entry | A.Policy):
            roots.extend(getattr(node, name) for name in fields)
    known = bound | set(AREAS) | set(BUILTINS)
    return sorted((c for c in calls if c.id not in known), key=lambda c: (c.span.line, c.span.column))
