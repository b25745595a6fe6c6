"""The rule for the paths of filesystem grants (``filesystem_access``), shared by the lifecycle service and the
DSL compiler (refused at registration, as a typed issue) and the sandbox-agent (refused again at run time,
before anything is mounted). Pure.

A grant path is absolute, ``/``-separated, with no ``.``, ``..`` or empty (``//``) components — never
normalised away, since what is granted must be exactly what was written — no NUL or control characters, no
component longer than :data:`MAX_COMPONENT_CHARS` and at most :data:`MAX_COMPONENTS` components. A trailing
``/`` is allowed (``/data/`` is ``/data``).
"""

from __future__ import annotations

MAX_COMPONENT_CHARS = 255
MAX_COMPONENTS = 32


class BadPath(ValueError):
    """A path that breaks the rule; the message says how."""


def path_components(path: str, what: str = "path") -> tuple[str, ...]:
    """The components of a ``/``-separated path (absolute or not), or :class:`BadPath` saying what is wrong."""
    body = path.strip("/") if path.startswith("/") else path.rstrip("/")
    if not body:
        return ()
    parts = tuple(body.split("/"))
    if len(parts) > MAX_COMPONENTS:
        raise BadPath(f"{what} {path[:120]!r} has more than {MAX_COMPONENTS} components")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadPath(f"{what} {path[:120]!r} must not contain '.', '..' or '//' components")
        if len(part) > MAX_COMPONENT_CHARS or not part.isprintable():
            raise BadPath(f"{what} {path[:120]!r} has a component that is too long or not printable")
    return parts


def grant_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a filesystem grant, or ``None`` if it can (by the rule above)."""
    if not path.startswith("/"):
        return f"filesystem grant {path[:120]!r} must be an absolute path"
    try:
        path_components(path, "filesystem grant")
    except BadPath as err:
        return str(err)
    return None
