"""Testing agents against a real gateway, with no fakes. Standard library only.

The SDK side of the test harness: :func:`call_agent` runs an agent written as a Python callable — taking an
:class:`~symbi_agent.Agent` (a plain function) or an :class:`~symbi_agent.AsyncAgent` (an ``async def``) —
connected to the socket of a real gateway, and returns what it returned (or raises what it raised).

The gateway side needs the runtime (NATS, the policy engine, the sandbox-agent), so it lives with the
runtime, in ``symbi_sandbox_agent.harness``: ``GatewayHarness(daemon)`` gives a callable its own channel
served by a running sandbox-agent — every request decided by the real policies, performed, and recorded on
the audit trail, filesystem grants included — or runs a container the same way a scheduled task runs::

    async with running sandbox-agent as daemon:            # e.g. symbi up, or a test fixture
        harness = GatewayHarness(daemon.service)
        run = await harness.run_callable(agent_program(my_agent), filesystem_access=[...])
        assert run.value == ... and [a.outcome for a in run.actions] == [...]

where ``def my_agent(agent: Agent) -> Any`` uses ``agent.data``, ``agent.memory`` … as it would in a sandbox.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

from symbi_agent.aio import AsyncAgent
from symbi_agent.client import Agent

AgentFunction = Callable[[Agent], Any] | Callable[[AsyncAgent], Awaitable[Any]]


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is an agent written against :class:`AsyncAgent` (an ``async def``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def call_agent(fn: AgentFunction, socket_path: str, *, timeout: float | None = None) -> Any:
    """Run ``fn`` connected to the gateway socket ``socket_path``; blocks (call it on a thread from async code).

    An ``async def`` runs on an event loop of its own with an :class:`AsyncAgent`; anything else gets an
    :class:`Agent`. The channel is closed afterwards, whatever ``fn`` did."""
    if is_async(fn):
        run_async = cast(Callable[[AsyncAgent], Awaitable[Any]], fn)

        async def main() -> Any:
            async with AsyncAgent(socket_path, timeout=timeout) as agent:
                return await run_async(agent)

        return asyncio.run(main())
    run_sync = cast(Callable[[Agent], Any], fn)
    with Agent(socket_path, timeout=timeout) as agent:
        return run_sync(agent)


def agent_program(fn: AgentFunction, *, timeout: float | None = None) -> Callable[[str], Any]:
    """``fn`` as the harness runs a callable agent: a function of the socket path (see :func:`call_agent`)."""
    return functools.partial(call_agent, fn, timeout=timeout)
