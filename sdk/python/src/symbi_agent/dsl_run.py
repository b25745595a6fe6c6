"""Runs an agent written in the Symbiont DSL inside its sandbox: ``python3 -m symbi_agent.dsl_run [FILE]``.

The definition comes from FILE, or from the environment the agent was registered with
(``symbi_dsl.body``: ``$SYMBI_DSL_SOURCE_000``…, ``$SYMBI_DSL_FILE``, ``$SYMBI_DSL_AGENT``, and the budgets
``$SYMBI_DSL_STEPS`` and ``$SYMBI_DSL_SECONDS``). The task's input (the file ``$SYMBI_INPUT``, else stdin) is
bound to the agent's parameters; the body's value is printed on stdout as the task's result.

The body reaches the world only through the builtins below, each an SDK call over the agent's channel, so
every action is decided by policy and recorded on the audit trail like any other agent's:
``memory.store/recall/forget``, ``knowledge.share/query``, ``messages.send/publish/request/reply/subscribe/
receive``, ``tools.list/call/invoke``, ``data.read/list/write``, ``http.*`` and ``models.*`` (whatever the SDK
offers; where the runtime does not perform an action yet, the call fails with a ``NotAvailable`` error the
body can catch), and the shorthands ``remember(text)``, ``recall(query)`` (the memories found), ``send(to,
body)``, ``log(value)`` (a line on stderr) and ``now()`` (UTC, ISO 8601), with Symbiont's spellings
``invoke_tool(name, args)``, ``memory_search``, ``memory_write``, ``send_to``. The list is
``symbi_dsl.body.AREAS`` and ``BUILTINS``: registration refuses a body that calls anything else.

Exit status: 0 with the result; 1 when the body failed (stderr's last line is ``file:line:column: message``,
which the sandbox-agent reports as the task's failure reason); 2 when there is nothing runnable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from symbi_dsl.body import (
    AGENT_ENV,
    AREAS,
    DEFAULT_SECONDS,
    FILE_ENV,
    SECONDS_ENV,
    STEPS_ENV,
    BodyError,
    bind_params,
    body_of,
    find_agent,
    functions_of,
    read_input,
    render,
    source_from_env,
    steps_of,
)
from symbi_dsl.diagnostics import DslError
from symbi_dsl.interpreter import Budget, DslRuntimeError, Interpreter
from symbi_dsl.parser import parse

from symbi_agent.client import Agent


def _methods(area: object) -> dict[str, Callable[..., Any]]:
    """The public methods of one SDK area (so an action the SDK gains is a builtin without a change here)."""
    return {
        name: getattr(area, name) for name in dir(area) if not name.startswith("_") and callable(getattr(area, name))
    }


def builtins(agent: Agent) -> dict[str, Any]:
    """The names a body can call, each an SDK action of ``agent`` (or a line on stderr, for ``log``)."""
    names: dict[str, Any] = {area: _methods(getattr(agent, area)) for area in AREAS if hasattr(agent, area)}

    def remember(text: str, **kwargs: Any) -> Any:
        return agent.memory.store(text, **kwargs)

    def recall(query: str, **kwargs: Any) -> Any:
        return agent.memory.recall(query, **kwargs).get("memories", [])

    def log(*values: Any) -> None:
        line = " ".join(render(v) for v in values).replace("\n", " ")
        print(line if not line.startswith("@symbi") else f" {line}", file=sys.stderr, flush=True)

    def now() -> str:
        return datetime.now(UTC).isoformat(timespec="milliseconds")

    def invoke_tool(name: str, arguments: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return agent.tools.call(name, arguments if arguments is not None else kwargs)

    names.update(remember=remember, recall=recall, send=agent.messages.send, log=log, now=now)
    # Symbiont's spellings of the same actions.
    names.update(invoke_tool=invoke_tool, memory_search=recall, memory_write=remember, send_to=agent.messages.send)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ
    try:
        if args:
            source, file = Path(args[0]).read_text(encoding="utf-8"), env.get(FILE_ENV) or args[0]
        else:
            source, file = source_from_env(env), env.get(FILE_ENV) or "<definition>"
        module = parse(source, file)
        agent = find_agent(module, env.get(AGENT_ENV))
        budget = Budget(
            steps=int(env.get(STEPS_ENV) or steps_of(agent)), seconds=float(env.get(SECONDS_ENV) or DEFAULT_SECONDS)
        )
        input_path = env.get("SYMBI_INPUT")
        raw = Path(input_path).read_bytes() if input_path else sys.stdin.buffer.read()
    except DslError as err:
        print(err.render(), file=sys.stderr)
        return 2
    except (BodyError, OSError, ValueError) as err:
        print(f"symbi_agent.dsl_run: {err}", file=sys.stderr)
        return 2
    with Agent() as sdk:
        interp = Interpreter(builtins(sdk), functions=functions_of(module, agent), budget=budget, file=file)
        try:
            variables, unbound = bind_params(agent.params, read_input(raw))
            for p in unbound:
                variables[p.name] = None if p.default is None else interp.eval(p.default, {})
            value = interp.run(body_of(agent), variables)
        except DslRuntimeError as err:
            print(f"{err}", file=sys.stderr, flush=True)
            return 1
    sys.stdout.write(render(value))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
