"""Bounding a list of config issues so it always fits in an event (``agent.failed``) and an error answer.

A definition can hold thousands of problems (one per element of a long list), each with an excerpt; recorded
uncapped they make an event larger than the event store takes, the append fails and the agent stays
Initializing. :func:`bounded` keeps the first :data:`MAX_ISSUES` issues, cuts every text to its own bound,
stops earlier once the issues kept would encode to more than :data:`MAX_ISSUES_BYTES`, and says how many it
left out in one last issue. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from symbi_contracts.lifecycle.config import ConfigIssue

#: At most this many issues are kept (plus one saying how many more there were).
MAX_ISSUES = 100
#: The issues kept encode (as JSON) to at most this many bytes, plus one issue and the summary.
MAX_ISSUES_BYTES = 256 * 1024
#: Bounds of each text of an issue, in characters (an excerpt is two lines of at most ~170 characters).
MAX_FIELD = 200
MAX_MESSAGE = 1_000
MAX_FILE = 1_000
MAX_EXCERPT = 600
MAX_HINT = 500

_ENCODER = msgspec.json.Encoder()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def trimmed(issue: ConfigIssue) -> ConfigIssue:
    """``issue`` with each text cut to its bound (an ellipsis marks a cut)."""
    texts = (issue.field, issue.message, issue.file, issue.excerpt, issue.hint)
    limits = (MAX_FIELD, MAX_MESSAGE, MAX_FILE, MAX_EXCERPT, MAX_HINT)
    if all(len(text) <= limit for text, limit in zip(texts, limits, strict=True)):
        return issue
    field, message, file, excerpt, hint = (_cut(t, n) for t, n in zip(texts, limits, strict=True))
    return msgspec.structs.replace(issue, field=field, message=message, file=file, excerpt=excerpt, hint=hint)


def bounded(issues: Iterable[ConfigIssue]) -> tuple[ConfigIssue, ...]:
    """The first issues of ``issues`` that fit the bounds (see the module docstring), then, if any were left
    out, one ``issues`` issue saying how many."""
    kept: list[ConfigIssue] = []
    size = 0
    left_out = 0
    for issue in issues:
        if left_out or len(kept) >= MAX_ISSUES or size > MAX_ISSUES_BYTES:
            left_out += 1
            continue
        issue = trimmed(issue)
        kept.append(issue)
        size += len(_ENCODER.encode(issue))
    if left_out:
        kept.append(
            ConfigIssue(
                "issues",
                f"and {left_out} more problem{'s' if left_out != 1 else ''} not listed",
                hint="fix the problems listed and try again to see the rest",
            )
        )
    return tuple(kept)
