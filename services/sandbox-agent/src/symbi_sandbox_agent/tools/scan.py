"""Signs of tool poisoning in a definition, as flags. Pure.

Every string a model may read is scanned: the description, the title, and every string anywhere in the
input/output schemas and annotations (parameter descriptions are a classic hiding place). Flags:

- ``invisible_unicode``: zero-width, tag-block or other format characters a human reviewer cannot see;
- ``bidi_control``: bidirectional overrides/isolates that make text read differently than it is stored;
- ``instruction_like``: text aimed at the model rather than describing the tool ("ignore previous
  instructions", "do not tell the user", "<IMPORTANT>", "before using any other tool", secrets and keys);
- ``mentions_tool:<name>``: a reference to another server's tool (cross-tool influence, shadowing);
- ``same_name_as:<server.tool>``: another server offers a tool of the same name;
- ``long_description``: a description longer than anyone reviews.

Flags do not block by themselves: policy decides (the ``flags`` of the tool are in the decision's context).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

from symbi_sandbox_agent.tools.names import folded

LONG_DESCRIPTION = 2000
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_INSTRUCTION = re.compile(
    r"|".join(
        (
            r"\bignore\s+(?:all\s+|any\s+)?(?:the\s+)?(?:previous|prior|above|earlier|other)\b",
            r"\b(?:do\s+not|don'?t|never)\s+(?:tell|inform|mention|reveal|show|let)\b[^.]{0,40}\buser\b",
            r"\bwithout\s+(?:telling|informing|asking)\b[^.]{0,20}\buser\b",
            r"<\s*/?\s*(?:important|system|instructions?|secret|hidden)\s*>",
            r"\b(?:before|after|instead\s+of)\s+(?:using|calling|invoking|running)\s+(?:this|any|the|other|another)\b",
            r"\byou\s+(?:must|should|need\s+to|are\s+required\s+to)\s+(?:first\s+)?(?:call|use|read|send|include|pass)\b",
            r"\bsystem\s+prompt\b",
            r"(?:~/\.ssh|id_rsa|\.env\b|/etc/passwd|\bmcp\.json\b|\bapi[_ -]?keys?\b|\bprivate\s+keys?\b|\bpasswords?\b)",
        )
    ),
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")


def strings_in(value: Any) -> Iterator[str]:
    """Every string in a JSON value: keys and values, at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings_in(v)


def _unicode_flags(text: str) -> set[str]:
    flags = set()
    for ch in text:
        if ch in _BIDI:
            flags.add("bidi_control")
        elif unicodedata.category(ch) in ("Cf", "Co", "Cn") or 0xE0000 <= ord(ch) <= 0xE007F:
            flags.add("invisible_unicode")
    return flags


def scan(
    server: str,
    definition: dict[str, Any],
    others: Iterable[tuple[str, str]] = (),
) -> tuple[str, ...]:
    """The poisoning flags of ``server``'s tool ``definition``; ``others`` are the (server, tool) names of
    the tools of every *other* server, to find references and same-named tools. Sorted, no duplicates."""
    flags: set[str] = set()
    texts = list(strings_in({k: v for k, v in definition.items() if k != "name"}))
    for text in texts:
        flags |= _unicode_flags(text)
        # Instructions hidden with invisible characters between letters are still instructions.
        visible = "".join(ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf")
        if _INSTRUCTION.search(visible):
            flags.add("instruction_like")
    description = str(definition.get("description") or "")
    if len(description) > LONG_DESCRIPTION:
        flags.add("long_description")
    own = folded(str(definition.get("name", "")))
    words = {folded(w) for text in texts for w in _WORD.findall(text)}
    for other_server, other_tool in others:
        if other_server == server:
            continue
        name = folded(other_tool)
        if name == own:
            flags.add(f"same_name_as:{other_server}.{other_tool}")
        if len(name) >= 4 and (name in words or folded(f"{other_server}.{other_tool}") in words):
            flags.add(f"mentions_tool:{other_server}.{other_tool}")
    return tuple(sorted(flags))
