"""Meaning: validate a parsed definition and compile its agent into the lifecycle's configuration.

:func:`check` reports every problem of a file at once (unknown keys, wrong types, out-of-range
durations and sizes, duplicate names, undefined references, bad cron expressions, policies without a
Cedar meaning). What Symbiont itself rejects is an error; what it accepts but we are stricter about, or
what Symbi cannot honour, is a warning (an error with ``strict``). :func:`compile_agent`, used when an
agent is registered, refuses the warnings that name something Symbi would not honour
(:data:`~symbi_dsl.diagnostics.UNSUPPORTED`), so nothing written is silently dropped. :func:`compile_agent` returns the configuration as a plain ``dict`` in the shape of
``symbi_contracts.lifecycle.config.AgentConfig`` (the lifecycle service converts it), within the same
bounds (imported from there).

DSL names are identifiers (``data_pipeline``); agent configurations are named with DNS labels, so
``_`` becomes ``-``.

The work is split by what it checks: :mod:`symbi_dsl.values` (reading values), :mod:`symbi_dsl.declarations`
(names, metadata, types), :mod:`symbi_dsl.blocks` (schedules, memories, webhooks, channels) and
:mod:`symbi_dsl.agents` (each agent's configuration); this module holds the entry points.
"""

from __future__ import annotations

from typing import Any

import msgspec

from symbi_dsl import ast as A
from symbi_dsl.agents import Checker
from symbi_dsl.agents import config_name as config_name
from symbi_dsl.body import DEFAULT_RUNNER_IMAGE, BodyError, has_body, runner_workload
from symbi_dsl.declarations import Program as Program
from symbi_dsl.diagnostics import DEFAULT_FILE, UNSUPPORTED, Diagnostic, DslError, Reporter, unlisted
from symbi_dsl.literal_checks import check_literals
from symbi_dsl.parser import parse


def check_module(module: A.Module, source: str, file: str = DEFAULT_FILE, *, strict: bool = False) -> Program:
    """Check everything in ``module``; :class:`DslError` with every problem if any is an error, else the
    program (its ``warnings`` listed). ``strict``: warnings are errors."""
    rep = Reporter(source, file, strict=strict)
    check_literals(module, rep)
    rep.raise_if_any()  # the steps below may convert any literal
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
    checker.program.warnings = [d for d in rep.listed() if d.severity == "warning"]
    checker.program.unlisted_unsupported = rep.unlisted.unsupported_lines
    return checker.program


def check(source: str, file: str = DEFAULT_FILE, *, strict: bool = False) -> Program:
    """Parse and check ``source``; :class:`DslError` with every problem found (warnings too) if any is an
    error, else the program with its ``warnings``. ``strict``: warnings are errors."""
    return check_module(parse(source, file), source, file, strict=strict)


def _unsupported(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """The warnings naming what Symbi would not honour, as errors (registration refuses them)."""
    out = []
    for d in diagnostics:
        if d.severity == "warning" and d.code in UNSUPPORTED:
            hint = d.hint or "Symbi does not honour this; remove it or rewrite it in Symbi's terms"
            out.append(Diagnostic(**{**msgspec.structs.asdict(d), "severity": "error", "hint": hint}))
    return out


def compile_agent(
    source: str,
    *,
    agent_id: str | None = None,
    agent: str | None = None,
    file: str = DEFAULT_FILE,
    runner_image: str = DEFAULT_RUNNER_IMAGE,
) -> dict[str, Any]:
    """The configuration (a dict shaped like ``AgentConfig``) of the one agent in ``source``.

    Used at registration: besides errors, every warning naming something Symbi would not honour (a policy
    rule with no Cedar meaning, a sandbox or setting Symbi lacks) is refused, each with its position.

    ``agent`` picks one when the file defines several; policies are compiled for principal
    ``Agent::"<agent_id>"`` (default: the agent's name). :class:`DslError` with every problem otherwise.

    An agent with a body (statements in its ``with`` blocks) and no ``workload`` of its own gets the body
    runner's (:func:`symbi_dsl.body.runner_workload`, image ``runner_image``): the file's text travels in its
    environment, so the body that runs is the one registered.
    """
    program = check(source, file)
    # What another agent of the file asks for does not stop this one; the rest of the file does.
    others = [a.span for name, a in program.agents.items() if agent is not None and name != agent]
    refused = [d for d in _unsupported(program.warnings) if not any(s.line <= d.line <= s.end_line for s in others)]
    more = sum(not any(s.line <= line <= s.end_line for s in others) for line in program.unlisted_unsupported)
    if refused or more:
        raise DslError([*refused, unlisted(more, "error", file)] if more else refused)
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
    checker.program = program  # collected by check: collecting again would report every problem again
    try:
        config = checker.agent_config(program.agents[chosen], agent_id)
    except RecursionError:
        rep.error("too_deep", "the definition nests too deeply to process", A.Span(1, 1, 1, 2))
    rep.raise_if_any()
    assert config is not None
    chosen_agent = program.agents[chosen]
    if "workload" not in config and has_body(chosen_agent):
        timeout = config.get("resources", {}).get("execution_timeout_s")
        try:
            config["workload"] = runner_workload(
                source, file=file, agent=chosen_agent, timeout_s=timeout, image=runner_image
            )
        except BodyError as err:
            rep.error("too_long", str(err), chosen_agent.name_span, "split the file, or give the agent a workload")
            rep.raise_if_any()
    return config
