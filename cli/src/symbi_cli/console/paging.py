"""Paging the console's lists: each list shows one page of a service's paged API and links to the next.

A list's position travels in the page's query string as the service's own cursor — the lifecycle's and the
scheduler's opaque ``next_cursor`` / ``next_after``, or the number the audit and lifecycle lists continue after
(a finding's id, an event's version). The console checks only its form here, before any service is called;
whether an opaque cursor is really one of the service's is the service's judgement, and its refusal is the
console's error page.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from symbi_common.errors import BadRequest

#: Agents per page of the agents list (the lifecycle API serves at most 500).
AGENTS_PAGE = 100
#: Events per page of an agent's lifecycle timeline (the lifecycle API serves at most 500).
TIMELINE_PAGE = 100
#: Tasks per group of the tasks page (the scheduler serves at most 1000).
TASKS_PAGE = 50
#: Findings per page of the audit page (the audit API serves at most 1000).
FINDINGS_PAGE = 20
#: The services' opaque cursors are URL-safe base64 without padding, far shorter than this.
CURSOR_RE = re.compile(r"[A-Za-z0-9_-]{1,512}")
#: The largest position a list continues after (the services' own bound on versions and ids).
MAX_POSITION = 2**62


def cursor(value: str, what: str) -> str | None:
    """``value`` as the opaque cursor to hand back to the service (None when empty, the first page), or
    :class:`BadRequest` when it has not the form of one: URL-safe base64 letters, at most 512."""
    if not value:
        return None
    if not CURSOR_RE.fullmatch(value):
        raise BadRequest(
            f"{value[:80]!r} is not a cursor of the {what} (the value of its 'next page' link); start from its first page",
            field="cursor",
        )
    return value


def position(value: str, what: str) -> int:
    """``value`` as the number a list continues after (0 when empty, the first page), or :class:`BadRequest`
    unless it is a whole number from 0 to 2**62."""
    if not value:
        return 0
    if not value.isascii() or not value.isdigit() or len(value) > 19 or int(value) > MAX_POSITION:
        raise BadRequest(
            f"{value[:80]!r} is not a position in the {what} (a whole number from 0 to 2**62)", field="after"
        )
    return int(value)


def link(path: str, **params: str | int) -> str:
    """``path`` with ``params`` as its query string (the href of a 'next page' link)."""
    return f"{path}?{urlencode(params)}" if params else path
