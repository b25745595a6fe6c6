"""No input makes the parser hang or raise anything but DslError (Hypothesis text, random bytes, mutations)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symbi_dsl import DslError, check, compile_agent, format_source, parse

EXAMPLES = sorted((Path(__file__).parents[3] / "examples" / "agents").glob("*.symbi"))
TOKENS = [
    "agent",
    "policy",
    "with",
    "schedule",
    "memory",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ":",
    "=",
    ",",
    ";",
    "=>",
    "->",
    "allow:",
    "deny:",
    "if",
    "else",
    "match",
    "let",
    "for",
    "in",
    "return",
    "30s",
    "5.minutes",
    "512MB",
    "vault://a/b",
    '"s"',
    "1",
    "x",
    ".",
    "&&",
    "||",
    "!",
    "-",
    "# c\n",
    "// c\n",
    "\n",
    "9" * 30,  # beyond 64 bits
    "9" * 400 + "MB",  # beyond any float
    "9" * 400 + ".5",
    '"\\ud800"',  # half of a UTF-16 pair
    "network_io",
    "cpu",
    "policy p { allow: memory.read if context.size <",
]


def _all_entry_points(text: str) -> None:
    """Every public entry point either succeeds or raises DslError, and quickly."""
    for fn in (parse, check, format_source, compile_agent):
        started = time.monotonic()
        error: DslError | None = None
        try:
            out = fn(text)
        except DslError as err:
            error = err
        else:
            if fn is compile_agent:  # what compiles can be stored: the lifecycle appends it as an event
                msgspec.msgpack.encode(out)
        assert time.monotonic() - started < 5.0, f"{fn.__name__} took too long"
        if error is not None:
            assert error.diagnostics
            assert all(d.message and d.code for d in error.diagnostics)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _all_entry_points(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_token_soup(tokens: list[str]) -> None:
    _all_entry_points(" ".join(tokens))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.integers(0, 2**32), st.integers(1, 8))
def test_mutated_examples(path: Path, seed: int, edits: int) -> None:
    rng = random.Random(seed)
    text = list(path.read_text())
    for _ in range(edits):
        i = rng.randrange(len(text))
        op = rng.randrange(3)
        if op == 0:
            del text[i]
        elif op == 1:
            text.insert(i, rng.choice("{}()[]:=,;\"'#/.-!x1 \n"))
        else:
            text[i] = rng.choice('{}()[]:=,;"x1 ')
    _all_entry_points("".join(text))


def test_random_bytes() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        _all_entry_points(data.decode("utf-8", errors="surrogateescape"))
        _all_entry_points(data.decode("latin-1"))


@pytest.mark.parametrize(
    "text",
    [
        "agent a() { x = " + "(" * 5000 + "1" + ")" * 5000 + " }",
        "agent a() { x = " + "+".join(["1"] * 5000) + " }",
        "agent a() { x = " + "!" * 5000 + "true }",
        "agent a() { x = " + "[" * 5000 + "]" * 5000 + " }",
        "agent a() { x = a" + ".b" * 5000 + " }",
        "function f() { " + "if x { " * 2000 + "}" * 2000 + " }",
        "agent a() { x = " + "y => " * 3000 + "1 }",
        "a" * 200_000,
        "\x00\x01\x02",
        '"' * 10_000,
    ],
    ids=["parens", "sum", "nots", "arrays", "members", "ifs", "lambdas", "long-name", "nul", "quotes"],
)
def test_pathological_inputs(text: str) -> None:
    _all_entry_points(text)


def test_oversized_input_is_refused() -> None:
    with pytest.raises(DslError) as info:
        parse("# " + "x" * 1_100_000)
    assert info.value.diagnostics[0].code == "too_large"
