"""Settings and names that passed the check but not the lifecycle's rules: each is now a diagnostic with its
position, at the contract's bounds (``symbi_contracts.lifecycle.config.MEMORY_MB``, the configuration name)."""

from __future__ import annotations

import pytest
from symbi_contracts.lifecycle.config import MEMORY_MB
from symbi_dsl import DslError, check, compile_agent


def _diagnostics(source: str) -> list[tuple[str, str, int, int]]:
    with pytest.raises(DslError) as info:
        compile_agent(source)
    return [(d.code, d.severity, d.line, d.column) for d in info.value.diagnostics]


@pytest.mark.parametrize("number", ["1e20", "0.00001", "1e-300", "1e300"])
def test_a_symbiont_memory_number_of_any_size_is_a_range_error(number: str) -> None:
    """``max_memory_mb = 1e20`` raised AssertionError (a 500 on configure): its text was no quantity token."""
    assert _diagnostics(f"agent a {{ with max_memory_mb = {number} {{ }} }}\n") == [("range", "error", 1, 32)]


def test_a_symbiont_memory_number_in_range_is_megabytes() -> None:
    source = "agent a { with max_memory_mb = 512.5 { } }\n"
    assert compile_agent(source)["resources"] == {"memory_mb": 512}


@pytest.mark.parametrize(
    ("size", "memory_mb"),
    [("16MB", 16), ("16MiB", 16), ("65536MB", 65_536), ("64GiB", 65_536), ("1GB", 1_000), ("1GiB", 1_024)],
)
def test_memory_at_the_contracts_bounds_compiles(size: str, memory_mb: int) -> None:
    """16MB, the least the contract allows, was refused (its bytes are under 16MiB)."""
    assert MEMORY_MB == (16, 65_536)
    assert compile_agent(f"agent a {{ with memory = {size} {{ }} }}\n")["resources"] == {"memory_mb": memory_mb}


@pytest.mark.parametrize("size", ["68000MB", "65537MB", "65GiB", "15.9MB", "15MiB", "1TB"])
def test_memory_past_the_contracts_bounds_is_a_range_error_at_its_position(size: str) -> None:
    """68000MB passed (its bytes are under 64GiB) and then failed registration at line 0."""
    assert _diagnostics(f"agent a {{\n  with memory = {size} {{ }}\n}}\n") == [("range", "error", 2, 17)]


@pytest.mark.parametrize("name", ["_worker", "worker_", "a" * 64, "__"])
def test_an_agent_name_with_no_configuration_name_is_refused_at_its_position(name: str) -> None:
    """``_worker`` compiled to ``-worker``, refused at registration with no position."""
    source = f"metadata {{ }}\nagent {name} {{ }}\n"
    assert [(d.code, d.line, d.column) for d in check(source).warnings] == [("unsupported", 2, 7)]
    assert _diagnostics(source) == [("unsupported", "error", 2, 7)]


@pytest.mark.parametrize(("name", "config"), [("Worker", "worker"), ("a" * 63, "a" * 63), ("x_1", "x-1")])
def test_an_agent_name_with_a_configuration_name_compiles(name: str, config: str) -> None:
    assert compile_agent(f"agent {name} {{ }}\n")["name"] == config


def test_a_bad_name_of_another_agent_does_not_stop_this_one() -> None:
    assert compile_agent("agent _other { }\nagent main { }\n", agent="main")["name"] == "main"
