"""Formatting: canonical, idempotent, meaning-preserving (examples and Hypothesis-generated definitions)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symbi_dsl import ast as A
from symbi_dsl import format_source, parse
from symbi_dsl.formatter import KEYWORDS, format_module
from symbi_dsl.literals import quantity

EXAMPLES = sorted((Path(__file__).parents[3] / "examples" / "agents").glob("*.symbi"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_canonical(path: Path) -> None:
    source = path.read_text()
    formatted = format_source(source)
    assert formatted == source  # `symbi dsl fmt --check examples/agents/*.symbi` passes
    assert parse(formatted) == parse(source)


def test_fmt_normalises_layout_and_keeps_comments() -> None:
    messy = """# header
agent   a( x : Int,y:String="d" )->[String]{ capabilities=["a.b"] , network = [ "h.example" ];
with sandbox=tier2,timeout=30s{let z=x+1 // add one
if z>1 and not y in ["a"] {return [y]} else {return []}}
// before the end
}
"""
    expected = """# header
agent a(x: Int, y: String = "d") -> List<String> {
  capabilities = ["a.b"]
  network = ["h.example"]

  with sandbox = tier2, timeout = 30s {
    let z = x + 1  // add one
    if z > 1 && !y in ["a"] {
      return [y]
    } else {
      return []
    }
  }
  // before the end
}
"""
    assert format_source(messy) == expected
    assert format_source(expected) == expected
    assert parse(expected) == parse(messy)


def test_statements_that_would_merge_get_a_semicolon() -> None:
    source = "function f() { g; (a + b).c; return; -x; h }\n"
    formatted = format_source(source)
    assert "  g;\n  (a + b).c\n  return;\n  -x\n" in formatted
    assert parse(formatted) == parse(source)


def test_long_lists_break_one_item_per_line() -> None:
    hosts = ", ".join(f'"host-{i}.example.com"' for i in range(8))
    formatted = format_source(f"agent a() {{ network = [{hosts}] }}\n")
    assert '  network = [\n    "host-0.example.com",\n' in formatted
    assert format_source(formatted) == formatted


# --- generated definitions ---------------------------------------------------------------------------

names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda n: n not in KEYWORDS)
type_names = st.sampled_from(["String", "Int", "Float", "Bool", "Duration", "Json", "Custom"])
keys = st.one_of(
    names,
    st.sampled_from(
        ["policy", "with", "agent", "type", "if", "in", "or", "deny", "let", "true", "catch", "match", "a b", "ä"]
    ),
)
strings = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
literals = st.one_of(
    strings.map(lambda s: A.Literal_("string", s)),
    st.integers(0, 10**12).map(lambda i: A.Literal_("int", i)),
    st.floats(0, 1e12, allow_nan=False, allow_infinity=False).map(lambda f: A.Literal_("float", f)),
    st.booleans().map(lambda b: A.Literal_("bool", b)),
    st.just(A.Literal_("null", None)),
    st.sampled_from(["30s", "5.minutes", "730d", "250ms", "512MB", "2GiB", "1.5KB"]).map(quantity),
    st.from_regex(r"[a-z][a-z0-9/_.-]{0,10}", fullmatch=True).map(A.Secret),
    names.map(A.Name),
)


def _stmt(e: A.Expr) -> A.Stmt:
    """An expression as a statement: an ``if`` standing alone is the ``if`` statement itself."""
    return e if isinstance(e, A.If) else A.ExprStmt(e)


def _extend(children: st.SearchStrategy[A.Expr]) -> st.SearchStrategy[A.Expr]:
    small = st.lists(children, max_size=3).map(tuple)
    return st.one_of(
        small.map(A.Array),
        st.lists(st.tuples(keys, children), max_size=3).map(lambda f: A.Record(tuple(f))),
        st.tuples(st.sampled_from(["!", "-"]), children).map(lambda t: A.Unary(*t)),
        st.tuples(
            st.sampled_from(["||", "&&", "==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%"]),
            children,
            children,
        ).map(lambda t: A.Binary(*t)),
        st.tuples(children, names).map(lambda t: A.Member(*t)),
        st.tuples(children, children).map(lambda t: A.Index(*t)),
        st.tuples(children, small).map(lambda t: A.Call(*t)),
        st.tuples(children, st.lists(st.builds(A.NamedArg, names, children), min_size=1, max_size=2)).map(
            lambda t: A.Call(t[0], tuple(t[1]))
        ),
        st.tuples(st.sampled_from(["Custom", "Result", "X1"]), st.lists(st.tuples(keys, children), max_size=2)).map(
            lambda t: A.TypeLiteral(t[0], tuple(t[1]))
        ),
        st.tuples(children, children, st.none() | children).map(
            lambda t: A.If(t[0], (_stmt(t[1]),), None if t[2] is None else (_stmt(t[2]),))
        ),
        st.tuples(children, st.lists(children, min_size=1, max_size=2)).map(
            lambda t: A.Match(t[0], (A.Arm(A.Name("_"), tuple(_stmt(e) for e in t[1])),))
        ),
        st.tuples(names, children).map(lambda t: A.Lambda(*t)),
        st.tuples(
            children,
            st.lists(
                st.tuples(st.one_of(literals.filter(lambda e: isinstance(e, A.Literal_)), names.map(A.Name)), children),
                max_size=3,
            ),
        ).map(lambda t: A.Match(t[0], tuple(A.Arm(p, b) for p, b in t[1]))),
    )


exprs = st.recursive(literals, _extend, max_leaves=12)
type_refs = st.recursive(
    st.builds(A.TypeRef, type_names, st.just(()), st.booleans()),
    lambda inner: st.builds(
        A.TypeRef, st.sampled_from(["List", "Map"]), st.lists(inner, min_size=1, max_size=2).map(tuple), st.booleans()
    ),
    max_leaves=3,
)


targets = st.one_of(names.map(A.Name), st.tuples(names, names).map(lambda t: A.Member(A.Name(t[0]), t[1])))
destructures = st.one_of(
    names.map(A.Destructure),
    st.tuples(st.sampled_from(["Some", "Ok"]), st.lists(names.map(A.Destructure), max_size=2)).map(
        lambda t: A.Destructure(t[0], tuple(t[1]))
    ),
)


def catches(inner: st.SearchStrategy[tuple[A.Stmt, ...]]) -> st.SearchStrategy[A.Catch]:
    return st.one_of(
        st.builds(A.Catch, st.none(), st.none() | names, inner),
        st.builds(A.Catch, type_names, names, inner),
    )


def _stmts(depth: int) -> st.SearchStrategy[tuple[A.Stmt, ...]]:
    simple: st.SearchStrategy[A.Stmt] = st.one_of(
        st.builds(A.Let, names, st.none() | type_refs, exprs),
        st.builds(A.Return, st.none() | exprs),
        exprs.map(_stmt),
        st.builds(A.Assign, targets, st.sampled_from(["=", "+=", "-=", "*=", "/=", "%="]), exprs),
    )
    if depth > 0:
        inner = _stmts(depth - 1)
        simple = st.one_of(
            simple,
            st.builds(A.If, exprs, inner, st.none() | inner),
            st.builds(A.For, names, exprs, inner),
            st.builds(A.Try, inner, st.lists(catches(inner), min_size=1, max_size=2).map(tuple)),
            st.builds(A.If, st.builds(A.LetCond, destructures, exprs), inner, st.none() | inner),
        )
    return st.lists(simple, max_size=3).map(tuple)


params = st.lists(st.builds(A.Param, names, type_refs, st.none() | exprs), max_size=2).map(tuple)
entries = st.lists(st.builds(A.Entry, keys, exprs), max_size=3).map(tuple)
rules = st.lists(
    st.builds(A.Rule, st.sampled_from(["allow", "deny", "require", "audit"]), exprs, st.none() | exprs), max_size=3
).map(tuple)
policies = st.builds(A.Policy, names, rules)
with_values = st.one_of(literals, st.lists(literals, max_size=2).map(lambda i: A.Array(tuple(i))))
agent_items = st.lists(
    st.one_of(
        st.builds(A.Entry, keys, exprs),
        policies,
        st.builds(A.With, st.lists(st.builds(A.Entry, names, with_values), max_size=2).map(tuple), _stmts(1)),
        st.builds(A.Function, names, params, st.none() | type_refs, _stmts(1)),
    ),
    max_size=4,
).map(tuple)
items = st.one_of(
    st.builds(A.Metadata, entries),
    st.builds(A.Agent, names, params, st.none() | type_refs, agent_items),
    policies,
    st.builds(A.TypeAlias_, names, type_refs),
    st.builds(A.TypeRecord, names, st.lists(st.tuples(names, type_refs), max_size=3).map(tuple)),
    st.builds(A.Function, names, params, st.none() | type_refs, _stmts(2)),
    st.builds(
        A.Block,
        st.sampled_from(["schedule", "memory", "webhook", "channel"]),
        names,
        st.lists(st.one_of(st.builds(A.Entry, keys, exprs), policies), max_size=3).map(tuple),
    ),
)
modules = st.lists(items, max_size=4).map(lambda i: A.Module(tuple(i)))


def _messy(text: str, seed: int) -> str:
    """The same definition laid out badly: random indentation, blank lines and trailing spaces."""
    rng = random.Random(seed)
    out = []
    for line in text.splitlines():
        out.append(" " * rng.randint(0, 6) + line.strip() + " " * rng.randint(0, 2))
        if rng.random() < 0.2:
            out.append("")
    return "\n".join(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules, st.integers(0, 2**32))
def test_generated_definitions_round_trip(module: A.Module, seed: int) -> None:
    text = format_module(module)
    assert parse(text) == module  # the printer writes exactly the tree
    messy = _messy(text, seed)
    formatted = format_source(messy)
    assert parse(formatted) == parse(messy)
    assert format_source(formatted) == formatted
