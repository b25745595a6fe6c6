"""Broken definitions: each yields the expected error at the expected position, all errors at once.

Checked with ``strict=True``: what Symbiont accepts and we only warn about is then an error too (the
lenient side is in test_lenient.py)."""

from __future__ import annotations

import pytest
from symbi_dsl import DslError, check, compile_agent

OK_AGENT = 'agent ok() {\n  capabilities = ["web.fetch"]\n}\n'

#: (definition, [(code, line, column, words in the message)]) — positions are 1-based.
CORPUS: list[tuple[str, list[tuple[str, int, int, str]]]] = [
    ("agent a() {\n  x = [1, 2\n}\n", [("syntax", 3, 1, "unexpected '}'")]),
    ('agent a() {\n  x = "open\n}\n', [("syntax", 2, 7, "unexpected character")]),
    ("agent a( {\n}\n", [("syntax", 1, 10, "unexpected '{'")]),
    ('agent a() {\n  capabilities = ["x"]\n', [("syntax", 2, 22, "ends early")]),
    ("agent a() { x = 'single' }\n", [("syntax", 1, 17, "unexpected character")]),
    ("metadata { version: 1.0.0 }\n", [("syntax", 1, 25, "unexpected '0'")]),
    ("agent a() { timout = 30s }\n", [("unknown_key", 1, 13, "unknown key 'timout'")]),
    ("agent a() { with timout = 30s { } }\n", [("unknown_key", 1, 18, "unknown setting 'timout'")]),
    ('agent a() { with timeout = "soon" { } }\n', [("type", 1, 28, "expected a duration")]),
    ("agent a() { with timeout = 2d { } }\n", [("range", 1, 28, "2d is out of range")]),
    ("agent a() { with memory = 1TB { } }\n", [("range", 1, 27, "1TB is out of range")]),
    ("agent a() { with memory = 8MB { } }\n", [("range", 1, 27, "8MB is out of range")]),
    ("agent a() { with cpu = 100 { } }\n", [("range", 1, 24, "between 0.1 and 64")]),
    # Literals no later step could hold: reported, not an OverflowError or an unstorable string.
    (
        "agent a() { with network_io = 9999999999999999999999999999999999999999 { } }\n",
        [("range", 1, 31, "does not fit a 64-bit integer")],
    ),
    ("agent a() { with cpu = " + "9" * 400 + ".5 { } }\n", [("range", 1, 24, "too large")]),
    (
        "agent a() {\n  policy p { allow: memory.read if context.size < 9999999999999999999999999999999999999999MB }\n}\n",
        [("range", 2, 51, "too large")],
    ),
    ('agent a() {\n  description = "half \\ud800 a pair"\n}\n', [("encoding", 2, 17, "half of a UTF-16 pair")]),
    ("agent a() { with sandbox = tier3 { } }\n", [("unsupported", 1, 28, "no tier3 sandbox")]),
    ("agent a() { with sandbox = tier9 { } }\n", [("value", 1, 28, "sandbox must be one of")]),
    ("agent a() { with timeout = 1m { }\n with timeout = 2m { } }\n", [("duplicate", 2, 7, "set twice")]),
    ('agent a() { capabilities = "web" }\n', [("type", 1, 28, "expected a list")]),
    ('agent a() { capabilities = ["Web Fetch"] }\n', [("value", 1, 29, "not a capability name")]),
    ('agent a() { version = "latest" }\n', [("value", 1, 23, "like 1.2.3")]),
    ('agent a() { apis = ["http://x.example"] }\n', [("value", 1, 21, "not an https:// URL")]),
    (
        'agent a() { filesystem = [{path: "rel", mode: "rwx"}] }\n',
        [
            ("value", 1, 34, "absolute path"),
            ("value", 1, 47, "mode must be one of"),
        ],
    ),
    ('agent a() { filesystem = [{path: "/data/logs/."}] }\n', [("value", 1, 34, "'.', '..' or '//'")]),
    ('agent a() { workload = {command: ["x"]} }\n', [("missing", 1, 24, "needs an image")]),
    ("agent a() { }\nagent a() { }\n", [("duplicate", 2, 7, "defined twice (first on line 1)")]),
    ("type T { a: String }\ntype T = Int\n", [("duplicate", 2, 6, "defined twice")]),
    ("agent a(x: Strnig) { }\n", [("undefined", 1, 12, "type 'Strnig'")]),
    ("agent a(x: List) { }\n", [("type", 1, 12, "takes 1 type argument")]),
    ("agent a() { policies = [nope] }\n", [("undefined", 1, 25, "policy 'nope'")]),
    ("agent a() { memory = nope }\n", [("undefined", 1, 22, "memory 'nope'")]),
    (OK_AGENT + 'schedule s { cron: "0 2 * * *", agent: ghost }\n', [("undefined", 4, 40, "agent 'ghost'")]),
    (OK_AGENT + 'schedule s { cron: "0 25 * * *", agent: ok }\n', [("cron", 4, 20, "not a valid cron")]),
    (OK_AGENT + 'schedule s { cron: "every day", agent: ok }\n', [("cron", 4, 20, "not a valid cron")]),
    (OK_AGENT + "schedule s { agent: ok }\n", [("missing", 4, 10, "neither 'cron' nor 'at'")]),
    (
        OK_AGENT + 'schedule s { cron: "0 * * * *", at: "2030-01-01T00:00:00Z", agent: ok }\n',
        [("missing", 4, 10, "both 'cron' and 'at'")],
    ),
    (
        OK_AGENT + 'schedule s { cron: "0 * * * *", agent: ok, timezone: "Mars/Olympus" }\n',
        [("value", 4, 54, "not a time zone")],
    ),
    (
        OK_AGENT + 'schedule s { cron: "0 * * * *", agent: ok, priority: urgent }\n',
        [("value", 4, 54, "priority must be one of")],
    ),
    (OK_AGENT + "memory m { retention: 10m }\n", [("range", 4, 23, "out of range")]),
    (OK_AGENT + "memory m { search { vector_weight: 2 } }\n", [("range", 4, 36, "between 0 and 1")]),
    (OK_AGENT + 'webhook w { path: "/h", agent: ok, secret: "plain" }\n', [("type", 4, 44, "secret reference")]),
    (OK_AGENT + "channel c { platform: irc, agent: ok }\n", [("unsupported", 4, 23, "connects")]),
    (OK_AGENT + "channel c { agent: ok }\n", [("missing", 4, 9, "needs 'platform'")]),
    ("policy p { allow: launch_missiles }\n", [("policy", 1, 19, "names an action")]),
    ('policy p { allow: tool.invoke if user.role == "x" }\n', [("policy", 1, 34, "unknown name 'user.role'")]),
    ('policy p { allow: tool.invoke("x") if context.n > 1.5 }\n', [("policy", 1, 51, "no fractional")]),
    ("policy p { require: data.read }\n", [("policy", 1, 21, "says which condition")]),
    ('policy p { require: redact(data.read("x"), "ssn") }\n', [("policy", 1, 44, "list of strings")]),
    ('policy p { allow: rocket.launch("x") }\n', [("policy", 1, 19, "which kind of resource")]),
    ("policy p { allow: task.frobnicate }\n", [("policy", 1, 12, "policy schema")]),
]


@pytest.mark.parametrize(("source", "expected"), CORPUS, ids=[str(i) for i in range(len(CORPUS))])
def test_each_broken_definition_reports_the_expected_error(
    source: str, expected: list[tuple[str, int, int, str]]
) -> None:
    with pytest.raises(DslError) as info:
        check(source, "broken.symbi", strict=True)
    got = [(d.code, d.line, d.column) for d in info.value.diagnostics]
    assert got == [(code, line, column) for code, line, column, _ in expected], info.value.render()
    for diagnostic, (_, _, _, words) in zip(info.value.diagnostics, expected, strict=True):
        assert words in diagnostic.message, diagnostic.message
        assert diagnostic.file == "broken.symbi"
        assert diagnostic.excerpt
        assert "^" in diagnostic.excerpt.splitlines()[1]


def test_all_errors_of_a_file_at_once() -> None:
    source = """agent a(x: Strng) {
  capabilites = ["web.fetch"]
  with sandbox = tier9, memory = 2TB {
    return x
  }
}

schedule s {
  cron: "61 * * * *"
  agent: b
}
"""
    with pytest.raises(DslError) as info:
        check(source)
    codes = [(d.code, d.line) for d in info.value.diagnostics]
    assert codes == [("undefined", 1), ("unknown_key", 2), ("value", 3), ("range", 3), ("cron", 9), ("undefined", 10)]
    assert info.value.diagnostics[1].hint == "did you mean 'capabilities'?"
    assert "(and 5 more)" in info.value.message


def test_syntax_errors_in_several_items_are_all_reported() -> None:
    source = "agent a() {\n  x = [1,\n}\n\nagent b() {\n  ok = 1\n}\n\npolicy p {\n  allow: tool.invoke(,\n}\n"
    with pytest.raises(DslError) as info:
        check(source)
    assert [(d.code, d.line) for d in info.value.diagnostics] == [("syntax", 3), ("syntax", 10)]


def test_a_caret_excerpt_and_hint_render_like_a_compiler() -> None:
    with pytest.raises(DslError) as info:
        check("agent a() {\n  with timout = 30s { }\n}\n", "x.symbi")
    assert info.value.render() == (
        "x.symbi:2:8: error[unknown_key]: unknown setting 'timout' in with\n"
        "    2 |   with timout = 30s { }\n"
        "      |        ^^^^^^\n"
        "  hint: did you mean 'timeout'?"
    )


def test_compile_needs_exactly_one_agent_or_a_name() -> None:
    two = "agent a() { }\nagent b() { }\n"
    with pytest.raises(DslError) as info:
        compile_agent(two)
    assert "defines 2 agents" in info.value.diagnostics[0].message
    assert compile_agent(two, agent="b")["name"] == "b"
    with pytest.raises(DslError):
        compile_agent(two, agent="c")
    with pytest.raises(DslError):
        compile_agent("type T = Int\n")
