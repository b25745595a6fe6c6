"""A linear check of Cedar text's shape, before any Cedar parser sees it.

Cedar's parser is recursive and runs on the caller's stack: text nested deeply enough (``((((…))))``,
``[[[…]]]``, a chain of ``if … then``) or one long enough expression (``1 + 1 + …``, ``context.a.a…``,
``true && true && …``) overflows it, and the process dies of SIGSEGV — no exception to catch. Measured with
cedarpy on an 8 MiB stack (a crash at the first number, none at the second): 800 (400) parentheses, 1,000
(500) brackets, 5,000 (2,000) chained ``if``, 30,000 (10,000) ``+`` terms or ``.a`` steps, 30,000 (5,000)
``&&`` operands. The bounds here are far below that and far above any shipped policy (the baseline and the
examples nest at most 3 deep, with at most 66 tokens, 20 operators and one ``if`` in a statement).

:func:`shape_problem` scans the text once, outside string literals and ``//`` comments, counting per
statement (``;``-terminated) the bracket nesting, the tokens and the ``if`` expressions.
"""

from __future__ import annotations

#: The deepest nesting of ``(``, ``[`` and ``{`` a statement may have.
MAX_NESTING = 32
#: The most tokens (names, literals, operators, punctuation) one statement may have.
MAX_TOKENS = 2_000
#: The most operators (``&&``, ``+``, ``.``, ``in``, ``has`` …) one statement may have: each nests the
#: expression's JSON form deeper, which Python's ``json`` and Cedar's own decoders read recursively too.
MAX_OPERATORS = 128
#: The most ``if`` expressions one statement may have (each nests its branches one level deeper).
MAX_IFS = 32

_OPEN, _CLOSE = "([{", ")]}"
_TWO_CHAR = ("==", "!=", "<=", ">=", "&&", "||", "::")
_OPERATORS = frozenset(
    ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", ".", "!", "in", "has", "like", "is")
)


def shape_problem(text: str) -> tuple[str, int] | None:
    """Why ``text`` is refused before parsing and the line where it is, or None if its shape is acceptable."""
    i, n, line = 0, len(text), 1
    depth = tokens = ops = ifs = 0
    start_line = 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if tokens == 0:
            start_line = line
        tokens += 1
        if tokens > MAX_TOKENS:
            return f"a statement has more than {MAX_TOKENS} tokens; split it into smaller policies", start_line
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                line += text[i] == "\n"
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif ch.isalnum() or ch == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if word in _OPERATORS:
                ops += 1
            elif word == "if":
                ifs += 1
                if ifs > MAX_IFS:
                    return f"a statement has more than {MAX_IFS} if-expressions", start_line
            i = j
        elif ch in _OPEN:
            depth += 1
            if depth > MAX_NESTING:
                return f"brackets are nested more than {MAX_NESTING} deep", line
            i += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
            i += 1
        elif ch == ";":
            if depth == 0:  # a statement ends (a ";" inside brackets ends nothing: the nesting goes on)
                tokens = ops = ifs = 0
            i += 1
        else:
            size = 2 if text.startswith(_TWO_CHAR, i) else 1
            ops += text[i : i + size] in _OPERATORS
            i += size
        if ops > MAX_OPERATORS:
            return f"a statement has more than {MAX_OPERATORS} operators; split it into smaller policies", start_line
    return None
