"""What a large or badly broken file costs: diagnostics are capped, and no part of a file is worked on again and
again (excerpts from line offsets found once, one collection per compile, each part of the file parsed ~once)."""

from __future__ import annotations

import time
from typing import Any

import lark
import pytest
from symbi_dsl import DslError, check, compile_agent
from symbi_dsl import parser as parser_module
from symbi_dsl.agents import Checker
from symbi_dsl.diagnostics import MAX_DIAGNOSTICS, excerpt

#: A valid file whose every metadata key is unknown: 12,000 warnings.
BIG_METADATA = "metadata {\n" + "".join(f"  k{i} = 1\n" for i in range(12_000)) + "}\nagent a { }\n"


def test_a_file_with_thousands_of_warnings_lists_a_bounded_number_and_says_how_many_more() -> None:
    program = check(BIG_METADATA)
    assert len(program.warnings) == MAX_DIAGNOSTICS + 1
    assert program.warnings[-1].code == "too_many"
    assert f"and {12_000 - MAX_DIAGNOSTICS} more warnings" in program.warnings[-1].message


def test_compiling_a_large_file_collects_its_declarations_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 12,000-line file took ~10 s: every diagnostic split the whole file into lines, and compile_agent reported
    everything twice (a second collect())."""
    calls = []
    collect = Checker.collect

    def counted(self: Checker) -> None:
        calls.append(1)
        collect(self)

    monkeypatch.setattr(Checker, "collect", counted)
    started = time.perf_counter()
    assert compile_agent(BIG_METADATA)["name"] == "a"
    assert time.perf_counter() - started < 4.0  # parsing dominates: ~0.5 s
    assert len(calls) == 1


def test_errors_past_the_limit_are_counted_not_listed() -> None:
    text = "agent a { capabilities = [" + ",".join(f"A{i}" for i in range(1_000)) + "] }\n"
    with pytest.raises(DslError) as info:
        check(text)
    errors = [d for d in info.value.diagnostics if d.severity == "error"]
    assert len(errors) == MAX_DIAGNOSTICS + 1
    assert errors[-1].code == "too_many"
    assert f"and {1_000 - MAX_DIAGNOSTICS} more errors" in errors[-1].message


def test_an_unsupported_setting_past_the_limit_is_still_refused_at_registration() -> None:
    """Warnings past the limit are not listed, but what Symbi would not honour must not register for that."""
    text = BIG_METADATA + "channel c { platform: irc, agent: a }\n"
    program = check(text)
    assert not any(d.code == "unsupported" for d in program.warnings)
    with pytest.raises(DslError) as info:
        compile_agent(text)
    assert [d.code for d in info.value.diagnostics] == ["too_many"]
    assert info.value.diagnostics[0].severity == "error"


def test_an_excerpt_of_a_long_line_is_a_window_around_the_column() -> None:
    source = "x\n" + "a" * 1_000_000 + "\n"
    shown = excerpt(source, 2, 500_000, 3).splitlines()
    assert len(shown[0]) < 200
    assert shown[1].endswith("^^^")
    assert excerpt("a\r\nbc\r\n", 2, 1) == "    2 | bc\n      | ^"


def test_syntax_errors_are_found_parsing_each_part_of_the_file_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each syntax error used to reparse the whole file (with the broken item blanked out): up to 20 parses of it."""
    parsed: list[int] = []
    real = parser_module.lark_parser()

    class Counting:
        def parse(self, text: str) -> Any:
            skipped = len(text) - len(text.lstrip())  # the empty lines standing for what parsed already
            try:
                result = real.parse(text)
            except lark.exceptions.UnexpectedInput as err:
                stop = err.pos_in_stream if isinstance(err.pos_in_stream, int) and err.pos_in_stream >= 0 else len(text)
                parsed.append(stop - skipped)
                raise
            parsed.append(len(text) - skipped)
            return result

    monkeypatch.setattr(parser_module, "lark_parser", Counting)
    source = "".join(
        f"agent a{i} {{ x = [1, }}\nmetadata {{ " + " ".join(f"q{j} = {j}" for j in range(400)) + " }\n"
        for i in range(25)
    )
    with pytest.raises(DslError) as info:
        check(source)
    assert len([d for d in info.value.diagnostics if d.code == "syntax"]) == parser_module.MAX_SYNTAX_ERRORS
    assert sum(parsed) <= len(source)
