"""The corpus: a minimal file per construct of the grammar (``corpus/constructs``, each saying on its first
line what ``check`` must find) and Symbiont's own agent definitions (``corpus/symbiont``, see SOURCE.md).

For every file: it parses; ``check`` finds exactly the errors and warnings expected (and under ``strict``
the warnings are errors); ``fmt`` keeps the syntax tree and formatting twice is formatting once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from symbi_dsl import DslError, check, compile_agent, format_source, parse
from symbi_dsl.diagnostics import UNSUPPORTED, Diagnostic

CORPUS = Path(__file__).parent / "corpus"
CONSTRUCTS = sorted((CORPUS / "constructs").glob("*.symbi"))
SYMBIONT = sorted((CORPUS / "symbiont").glob("*.symbi"))
ALL = CONSTRUCTS + SYMBIONT


def _expected(path: Path) -> tuple[str, Counter[str]]:
    """``// expect: ok``, ``// expect: warnings: code …`` or ``// expect: errors: code …``."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("// expect: "), f"{path.name} does not say what to expect"
    kind, _, codes = first.removeprefix("// expect: ").partition(":")
    return kind.strip(), Counter(codes.split())


def _check(path: Path, strict: bool = False) -> tuple[list[Diagnostic], list[Diagnostic]]:
    try:
        program = check(path.read_text(), path.name, strict=strict)
    except DslError as err:
        errors = [d for d in err.diagnostics if d.severity == "error"]
        return errors, [d for d in err.diagnostics if d.severity == "warning"]
    return [], program.warnings


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_parses_and_formats_to_the_same_tree(path: Path) -> None:
    source = path.read_text()
    tree = parse(source, path.name)
    once = format_source(source, path.name)
    assert parse(once, path.name) == tree
    assert format_source(once, path.name) == once


@pytest.mark.parametrize("path", CONSTRUCTS, ids=[p.stem for p in CONSTRUCTS])
def test_construct_checks_as_expected(path: Path) -> None:
    kind, codes = _expected(path)
    errors, warnings = _check(path)
    rendered = "\n".join(d.render() for d in errors + warnings)
    if kind == "ok":
        assert not errors, rendered
        assert not warnings, rendered
    elif kind == "warnings":
        assert not errors, rendered
        assert Counter(d.code for d in warnings) == codes, rendered
        strict_errors, _ = _check(path, strict=True)
        assert Counter(d.code for d in strict_errors) == codes
    else:
        assert Counter(d.code for d in errors) == codes, rendered
    for d in errors + warnings:  # every one points at the file with a caret
        assert d.line > 0, d.render()
        assert "^" in d.excerpt, d.render()


#: The warnings Symbiont's agents get: Symbi is stricter (types, versions, spellings) or cannot honour them.
SYMBIONT_CODES = {"duplicate", "policy", "type", "undefined", "unknown_key", "unsupported", "value"}


@pytest.mark.parametrize("path", SYMBIONT, ids=[p.stem for p in SYMBIONT])
def test_symbiont_agents_check_without_errors(path: Path) -> None:
    errors, warnings = _check(path)
    assert not errors, "\n".join(d.render() for d in errors)
    assert {d.code for d in warnings} <= SYMBIONT_CODES
    strict, _ = _check(path, strict=True)
    as_errors = [Diagnostic(**{**_fields(d), "severity": "error"}) for d in warnings]
    key = lambda d: (d.line, d.column, d.code, d.message)  # noqa: E731
    assert sorted(strict, key=key) == sorted(as_errors, key=key)


def test_symbiont_webhook_handler_warnings() -> None:
    _, warnings = _check(CORPUS / "symbiont" / "webhook_handler.symbi")
    got = {(d.line, d.code, d.message) for d in warnings}
    assert (47, "value", "sandbox memory is ephemeral anyway; write a size like 512MB") in got
    assert (50, "value", "write the sandbox as tier1") in got
    assert (51, "type", "a bare number is read as milliseconds: 5000ms") in got
    assert (48, "unsupported", "the setting 'privacy' is not honoured by Symbi") in got
    assert (22, "undefined", "type 'JSON' is not defined") in got


def _fields(d: Diagnostic) -> dict[str, object]:
    return {f: getattr(d, f) for f in d.__struct_fields__}


def test_registration_names_what_symbi_cannot_honour() -> None:
    source = (CORPUS / "symbiont" / "webhook_handler.symbi").read_text()
    with pytest.raises(DslError) as info:
        compile_agent(source, file="webhook_handler.symbi")
    refused = info.value.diagnostics
    assert refused
    assert all(d.severity == "error" and d.code in UNSUPPORTED for d in refused)
    messages = [d.message for d in refused]
    assert "the setting 'privacy' is not honoured by Symbi" in messages
    assert any(m.endswith("this rule is not enforced") for m in messages)


def test_registration_accepts_what_is_only_stricter() -> None:
    source = (CORPUS / "constructs" / "with_settings_forms.symbi").read_text()
    source = source.replace("agent worker(job: Json)", "agent worker(job: Job)")  # an undeclared type: a warning
    config = compile_agent(source)
    assert config["security_tier"] == "tier2"
    assert config["resources"]["execution_timeout_s"] == 120


def test_registration_refuses_only_what_concerns_the_agent_registered() -> None:
    source = (CORPUS / "constructs" / "agent_without_params.symbi").read_text() + (
        '\nagent other {\n  with sandbox = "e2b" {\n    log("run");\n  }\n}\n'
    )
    assert compile_agent(source, agent="greeter")["name"] == "greeter"
    with pytest.raises(DslError) as info:
        compile_agent(source, agent="other")
    assert [(d.code, d.line, d.message) for d in info.value.diagnostics] == [
        ("unsupported", 7, "Symbi has no e2b sandbox")
    ]
