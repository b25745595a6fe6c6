"""Text to syntax tree with lark (LALR, grammar in ``symbiont.lark``), and syntax errors as diagnostics.

The tree is built while lark parses (its inline transformer, in :mod:`symbi_dsl.builder`): no parse tree,
no position propagation, which keeps a 1,000-line file under 100 ms. Keywords and braces are kept by the
grammar (``!`` rules) where they mark a node's start or end. A syntax error does not stop the search for
others (:mod:`symbi_dsl.syntax_errors`): the rest of the file after the broken top-level item is parsed again
(what came before it parsed, so it is left out, its lines kept as empty lines for the line numbers), so every
broken item gets its own diagnostic and the whole search parses each part of the file about once.

Nothing but :class:`~symbi_dsl.diagnostics.DslError` leaves :func:`parse`, whatever the input.
"""

from __future__ import annotations

from typing import cast

import lark

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import DEFAULT_FILE, Diagnostic, DslError, Reporter
from symbi_dsl.grammar import comments, lark_parser
from symbi_dsl.grammar import raw_parser as raw_parser
from symbi_dsl.literals import quantity as quantity
from symbi_dsl.literals import unescape as unescape
from symbi_dsl.syntax_errors import item_bounds, report_syntax_error, rest_after

MAX_SOURCE_BYTES = 1_000_000
MAX_SYNTAX_ERRORS = 20


def parse(source: str, file: str = DEFAULT_FILE) -> A.Module:
    """The syntax tree of ``source``; :class:`DslError` with every syntax error found otherwise."""
    reporter = Reporter(source, file)
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        reporter.error("too_large", f"a definition may be at most {MAX_SOURCE_BYTES} bytes", A.Span(1, 1, 1, 2))
        reporter.raise_if_any()
    text = source
    for _ in range(MAX_SYNTAX_ERRORS):
        comments.items = []
        try:
            module = cast(A.Module, lark_parser().parse(text))
        except lark.exceptions.UnexpectedInput as err:
            report_syntax_error(reporter, err)
            line = max(1, getattr(err, "line", 1) or 1)
            begin, end = item_bounds(text, line)
            if text[begin:end].strip() == "":
                break
            text = rest_after(text, end)
            continue
        except RecursionError:
            reporter.error("too_deep", "the definition nests too deeply to process", A.Span(1, 1, 1, 2))
            break
        except lark.exceptions.LarkError as err:  # pragma: no cover - a grammar/transformer defect
            reporter.error("syntax", f"cannot parse: {err}", A.Span(1, 1, 1, 2))
            break
        if not reporter.diagnostics:
            return A.Module(module.items, tuple(comments.items), span=module.span)
        break
    reporter.raise_if_any()
    raise DslError([Diagnostic(code="syntax", message="cannot parse the definition", file=file)])
