"""Parsing: every example, each construct of the language, positions and comments."""

from __future__ import annotations

from pathlib import Path

import pytest
from symbi_dsl import ast as A
from symbi_dsl import parse
from symbi_dsl.literals import quantity

EXAMPLES = sorted((Path(__file__).parents[3] / "examples" / "agents").glob("*.symbi"))


def test_there_are_a_dozen_examples() -> None:
    assert len(EXAMPLES) >= 12


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_parses(path: Path) -> None:
    module = parse(path.read_text(), str(path))
    assert any(isinstance(item, A.Agent) for item in module.items)


def _expr(text: str) -> A.Expr:
    module = parse(f"agent a() {{ x = {text} }}")
    agent = module.items[0]
    assert isinstance(agent, A.Agent)
    entry = agent.items[0]
    assert isinstance(entry, A.Entry)
    assert not isinstance(entry.value, tuple)
    return entry.value


def test_operator_precedence_and_words() -> None:
    e = _expr("a || b && !c == 1 + 2 * -3")
    assert e == A.Binary(
        "||",
        A.Name("a"),
        A.Binary(
            "&&",
            A.Name("b"),
            A.Binary(
                "==",
                A.Unary("!", A.Name("c")),
                A.Binary(
                    "+", A.Literal_("int", 1), A.Binary("*", A.Literal_("int", 2), A.Unary("-", A.Literal_("int", 3)))
                ),
            ),
        ),
    )
    assert _expr("a or b and not c") == _expr("a || b && !c")
    assert _expr("x in [1, 2]") == A.Binary("in", A.Name("x"), A.Array((A.Literal_("int", 1), A.Literal_("int", 2))))
    # Word operators do not swallow the start of longer names.
    assert _expr("order != index") == A.Binary("!=", A.Name("order"), A.Name("index"))


def test_postfix_lambdas_records_and_literals() -> None:
    e = _expr("rows.filter(r => r.amount > 0)[0].id")
    assert isinstance(e, A.Member)
    assert e.name == "id"
    assert isinstance(e.obj, A.Index)
    call = e.obj.obj
    assert isinstance(call, A.Call)
    assert isinstance(call.args[0], A.Lambda)
    assert _expr('{a: 1, "b c": true, d: null}') == A.Record(
        (("a", A.Literal_("int", 1)), ("b c", A.Literal_("bool", True)), ("d", A.Literal_("null", None)))
    )
    assert _expr('"tab\\tquote\\""') == A.Literal_("string", 'tab\tquote"')
    assert _expr("1.5e3") == A.Literal_("float", 1500.0)
    assert _expr("vault://db/prod-password") == A.Secret("db/prod-password")


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("30s", "duration", 30),
        ("5.minutes", "duration", 300),
        ("1.hour", "duration", 3600),
        ("730d", "duration", 730 * 86400),
        ("250ms", "duration", 0.25),
        ("2w", "duration", 14 * 86400),
        ("512MB", "size", 512e6),
        ("2GiB", "size", 2 * 2**30),
        ("1.5KB", "size", 1500),
    ],
)
def test_durations_and_sizes(text: str, kind: str, value: float) -> None:
    e = _expr(text)
    assert isinstance(e, A.Quantity)
    assert (e.kind, e.value, e.text) == (kind, value, text)
    assert quantity(text).value == value


def test_statements_in_with_blocks() -> None:
    module = parse(
        """agent a(x: List<String>, n: Int? = 3) -> [String] {
  with sandbox = tier2, timeout = 30s {
    let y: Int = 1
    if y > 0 { f(y) } else if y < 0 { g() } else { h() }
    for item in x { emit(item) }
    try { risky() } catch err { log(err) }
    let z = match y { 1 => "one", "s" => 2, true => 3, null => 4, _ => 0 }
    return z
  }
}"""
    )
    agent = module.items[0]
    assert isinstance(agent, A.Agent)
    assert agent.params[0].type == A.TypeRef("List", (A.TypeRef("String"),))
    assert agent.params[1] == A.Param("n", A.TypeRef("Int", optional=True), A.Literal_("int", 3))
    assert agent.returns == A.TypeRef("List", (A.TypeRef("String"),))
    block = agent.items[0]
    assert isinstance(block, A.With)
    assert [s.key for s in block.settings] == ["sandbox", "timeout"]
    kinds = [type(s).__name__ for s in block.body]
    assert kinds == ["Let", "If", "For", "Try", "Let", "Return"]
    branch = block.body[1]
    assert isinstance(branch, A.If)
    assert isinstance(branch.orelse, A.If)
    assert isinstance(branch.orelse.orelse, tuple)


def test_top_level_declarations_comments_and_keyword_keys() -> None:
    source = """# a file comment
metadata { version = "1.0.0", tags = ["a"], extra = {nested: [1, 2]} }
type T { a: String, b: [Int]? }
type U = Map<String, T>
function f(a: Int) -> Int { return a + 1 }
policy p { allow: tool.invoke("x") if context.n > 1; deny: data.write }
schedule s { cron: "0 * * * *", agent: a, one_shot: true }  // trailing
memory m { store: markdown, search { vector_weight: 0.5 } }
webhook w { path: "/hooks/w", agent: a }
channel c { platform: slack, agent: a, policy: p, with: 1 }
agent a() { policy: 1 }
"""
    module = parse(source)
    kinds = [type(i).__name__ for i in module.items]
    assert kinds == [
        "Metadata",
        "TypeRecord",
        "TypeAlias_",
        "Function",
        "Policy",
        "Block",
        "Block",
        "Block",
        "Block",
        "Agent",
    ]
    channel = module.items[8]
    assert isinstance(channel, A.Block)
    assert [e.key for e in channel.entries] == ["platform", "agent", "policy", "with"]
    assert module.comments == ((1, 1, "# a file comment"), (7, 61, "// trailing"))
    memory = module.items[6]
    assert isinstance(memory, A.Block)
    assert isinstance(memory.entries[1].value, tuple)


def test_positions_are_one_based_lines_and_columns() -> None:
    module = parse('\n\nagent a() {\n  x = "v"\n}\n')
    agent = module.items[0]
    assert isinstance(agent, A.Agent)
    assert (agent.span.line, agent.span.column) == (3, 1)
    entry = agent.items[0]
    assert isinstance(entry, A.Entry)
    assert not isinstance(entry.value, tuple)
    assert (entry.span.line, entry.span.column, entry.value.span.column) == (4, 3, 7)


def test_a_minus_after_a_loop_or_try_starts_a_statement_after_an_if_continues_it() -> None:
    def body(text: str) -> tuple[A.Stmt, ...]:
        item = parse(f"function f() {{\n{text}\n}}\n").items[0]
        assert isinstance(item, A.Function)
        return item.body

    for head in ("for x in xs { }", "try { } catch (e) { }"):
        stmts = body(f"{head}\n-1")
        assert stmts[1] == A.ExprStmt(A.Unary("-", A.Literal_("int", 1)))
    # an `if` is an expression too: `-1` on the next line subtracts (write `;` to end the `if`)
    (only,) = body("let y = if c { 1 } else { 2 }\n-1")
    assert isinstance(only, A.Let)
    assert isinstance(only.value, A.Binary)
    assert len(body("if c { }; -1")) == 2
