"""The context service's metrics and spans: memory and knowledge operations by kind and outcome."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from prometheus_client import Counter, Histogram
from symbi_common.errors import SymbiError
from symbi_common.telemetry import traced

P = ParamSpec("P")
R = TypeVar("R")

OPERATIONS = Counter(
    "symbi_context_operations_total",
    "Memory and knowledge operations (store, forget, ingest, forget_documents, retrieve, sweep) by outcome",
    ["operation", "outcome"],
)
OPERATION_SECONDS = Histogram(
    "symbi_context_operation_seconds",
    "Latency of memory and knowledge operations (embedding, policy decision and append included)",
    ["operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def operation(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Count, time and trace (span ``context.<name>``) every call of the decorated operation; the outcome
    is ``ok`` or the typed error's code."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            outcome = "ok"
            try:
                with traced(f"context.{name}"):
                    return await fn(*args, **kwargs)
            except SymbiError as err:
                outcome = err.code
                raise
            except BaseException:
                outcome = "internal"
                raise
            finally:
                OPERATIONS.labels(name, outcome).inc()
                OPERATION_SECONDS.labels(name).observe(time.perf_counter() - started)

        return run

    return wrap
