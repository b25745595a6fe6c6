"""Parsing a 1,000-line agent definition (the Symbiont DSL) into its syntax tree.

The definition is built from the example definitions in ``examples/agents/`` (each agent renamed so
the file stays valid), repeated until it has at least 1,000 lines: metadata, types, policies, agents
with policies and ``with`` bodies, schedules, memory/webhook/channel blocks, comments.

* ours: ``symbi_dsl.parse`` — lexing, LALR parsing with positions, syntax tree with spans, comments.
* baseline: lark's raw parse of the same text with the same grammar (no positions, lark's own tree):
  the floor set by the parsing library. For scale, ``json.loads`` and ``tomllib.loads`` of a document
  of the same size are printed too, and the full ``check`` (validation and Cedar compilation).

The body interpreter (``symbi_dsl.interpreter``) is measured too: statements per second running a loop
written in the DSL, against the same loop as plain Python (the ratio is printed; no target yet).

Runs alternate baseline / ours after a warm-up; figures are medians.

    uv run python bench/dsl_parse.py [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import _common
from symbi_dsl import ast as A
from symbi_dsl import check, parse
from symbi_dsl.grammar import raw_parser
from symbi_dsl.interpreter import Budget, Interpreter

TARGET_MS = 100.0
EXAMPLES = Path(__file__).parents[1] / "examples" / "agents"


_DECL = re.compile(r"^\s*(?:agent|policy|type|schedule|memory|webhook|channel|function) (\w+)", re.M)


def definition(min_lines: int = 1000) -> str:
    """A valid definition of at least ``min_lines`` lines from the examples: each copy renames what it declares."""
    sources = [p.read_text() for p in sorted(EXAMPLES.glob("*.symbi"))]
    parts: list[str] = []
    copy = 0
    while True:
        for source in sources:
            if sum(p.count("\n") + 1 for p in parts) >= min_lines:
                return "\n".join(parts)
            if copy:
                source = re.sub(r"(?ms)^metadata \{.*?^\}\n", "", source)  # one metadata block per file
            for name in set(_DECL.findall(source)):
                source = re.sub(rf"\b{name}\b", f"{name}_{copy}", source)
            parts.append(source)
            copy += 1


def json_document(size: int) -> str:
    items = []
    i = 0
    while len(json.dumps(items)) < size:
        items.append(
            {
                "name": f"agent_{i}",
                "capabilities": ["web.fetch", "text.summarise"],
                "memory_mb": 512,
                "policies": [{"allow": "tool.invoke", "if": "context.classification == 'public'"}],
            }
        )
        i += 1
    return json.dumps(items, indent=1)


def toml_document(size: int) -> str:
    lines: list[str] = []
    i = 0
    while sum(len(line) + 1 for line in lines) < size:
        lines += [
            f"[agent_{i}]",
            'capabilities = ["web.fetch", "text.summarise"]',
            "memory_mb = 512",
            'policy = { allow = "tool.invoke", if = "context.classification == public" }',
            "",
        ]
        i += 1
    return "\n".join(lines)


BODY = """
function work(items: [int]) -> int {
  let total = 0;
  for x in items {
    if x % 3 == 0 {
      total += x * 2;
    } else {
      total -= 1;
    }
  }
  return total;
}
"""


def work_python(items: list[int]) -> int:
    """The same logic as ``BODY`` in plain Python."""
    total = 0
    for x in items:
        if x % 3 == 0:
            total += x * 2
        else:
            total -= 1
    return total


def interpreter_rate(n: int, runs: int) -> tuple[float, float, int]:
    """Statements per second: the interpreter, plain Python (same statements), and the statements per run."""
    fn = next(i for i in parse(BODY).items if isinstance(i, A.Function))
    items = list(range(n))
    interp = Interpreter(functions=[fn], budget=Budget(steps=10**9, seconds=600))
    main = parse("function main() { return work(items) }").items[0]
    assert isinstance(main, A.Function)
    assert interp.run(main.body, {"items": items}) == work_python(items)
    steps = interp.budget.used
    ours = statistics.median(timed(lambda: interp.run(main.body, {"items": items})) for _ in range(runs))
    plain = statistics.median(timed(lambda: work_python(items)) for _ in range(runs))
    return steps / (ours / 1000), steps / (plain / 1000), steps


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (a few seconds)")
    ap.add_argument("--runs", type=int, help="measured runs of each (default 30, quick 8)")
    args = ap.parse_args()
    runs = args.runs or (8 if args.quick else 30)

    text = definition()
    lines = text.count("\n")
    module = parse(text)  # also checks the generated text is valid
    raw = raw_parser()
    as_json, as_toml = json_document(len(text)), toml_document(len(text))
    for _ in range(3):
        raw.parse(text)
        parse(text)

    ours: list[float] = []
    base: list[float] = []
    for _ in range(runs):
        base.append(timed(lambda: raw.parse(text)))
        ours.append(timed(lambda: parse(text)))
    json_ms = statistics.median(timed(lambda: json.loads(as_json)) for _ in range(runs))
    toml_ms = statistics.median(timed(lambda: tomllib.loads(as_toml)) for _ in range(runs))
    check_ms = statistics.median(timed(lambda: check(text)) for _ in range(max(3, runs // 4)))

    rate, plain_rate, steps = interpreter_rate(2_000 if args.quick else 20_000, max(3, runs // 4))

    p50, b50 = statistics.median(ours), statistics.median(base)
    print(_common.machine_summary())
    print(f"definition: {lines} lines, {len(text)} bytes, {len(module.items)} declarations, runs={runs}")
    print(f"symbi_dsl.parse   median={p50:.1f} ms min={min(ours):.1f} ms max={max(ours):.1f} ms")
    print(f"lark raw parse    median={b50:.1f} ms min={min(base):.1f} ms")
    print(f"json.loads        median={json_ms:.2f} ms ({len(as_json)} bytes)")
    print(f"tomllib.loads     median={toml_ms:.2f} ms ({len(as_toml)} bytes)")
    print(f"symbi_dsl.check   median={check_ms:.1f} ms (parse + validation + Cedar compilation)")
    print(
        f"interpreter       {rate:,.0f} statements/s; the same in plain Python {plain_rate:,.0f}/s "
        f"({steps} statements a run; Python is {plain_rate / rate:.0f}x faster; no target yet)"
    )
    print(_common.result_line("dsl_parse", p50, b50, "ms", f"<{TARGET_MS:g}", p50 < TARGET_MS))


if __name__ == "__main__":
    main()
