"""Filesystem grants: which host directories a sandbox sees, where, and whether it may write. Pure.

The operator declares *data roots* (``[sandbox] data_roots``: a name → a host directory). An agent's
definition grants paths (``filesystem_access``: ``{path, mode}``, mode ``read`` or ``read_write``); each
grant names a directory inside one root, either portably as ``/symbi/data/<root>/<sub>`` or by the host
path under the root's directory. A granted directory is mounted at ``/symbi/data/<root>/<sub>`` in the
sandbox, read-only unless the grant's mode is ``read_write``. Everything else is refused, with the reason:
a path with ``.`` or ``..`` components (never normalised away), a relative path, a path outside every root, a
root that is not declared, two grants of the same directory, a ``read`` grant inside a ``read_write`` one
(see :func:`plan`), and — checked by :mod:`.data_roots` on the disk, with :func:`confined` — a directory
whose real path (symlinks resolved) leaves its root.

Inside a sandbox, ``data.*`` requests name a path under ``/symbi/data`` (``logs/app/x.log`` or
``/symbi/data/logs/app/x.log``); :func:`locate` finds the mount that covers it (the deepest one) and the
components below it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from symbi_contracts.grant_paths import BadPath, path_components
from symbi_contracts.sandbox_agent.errors import SandboxRefused

#: Where granted directories appear in a sandbox.
DATA_MOUNT = "/symbi/data"
MODES = ("read", "read_write")
#: A data root's name: it becomes a path component and a Cedar ``Data`` id.
ROOT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")


class GrantRefused(SandboxRefused):
    """A filesystem grant of the agent's definition cannot be mounted here (the task is refused)."""

    code = "grant_refused"


class BadDataPath(ValueError):
    """A path of a ``data.*`` request that is malformed (the message says why)."""


class NotGranted(BadDataPath):
    """A path of a ``data.*`` request that no filesystem grant of the agent covers."""


@dataclass(frozen=True, slots=True)
class DataRoot:
    """A data root as the daemon uses it: ``path`` is its real host path (absolute, no symlink in it)."""

    name: str
    path: str
    classification: str = ""
    #: The path as the operator wrote it, when that differs (a symlink on the way): grants may name either.
    declared: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    """One grant of a definition, matched to its root (not yet looked at on the disk)."""

    root: DataRoot
    #: The components under the root (empty: the whole root).
    parts: tuple[str, ...]
    writable: bool
    #: The path as the definition wrote it (for messages).
    requested: str

    @property
    def rel(self) -> str:
        return "/".join(self.parts)

    @property
    def target(self) -> str:
        return "/".join((DATA_MOUNT, self.root.name, *self.parts))

    @property
    def host_path(self) -> str:
        """Where it is on the host, before symlinks are resolved."""
        return "/".join((self.root.path.rstrip("/"), *self.parts)) if self.parts else self.root.path


@dataclass(frozen=True, slots=True)
class DataMount:
    """A grant checked on the disk: ``source`` is the real host directory mounted at ``target``."""

    root: str
    rel: str
    source: str
    target: str
    read_only: bool
    classification: str = ""
    #: The root's real path (``source`` is inside it): requests walk from here, never through a symlink.
    root_path: str = ""

    @property
    def anchor(self) -> tuple[str, tuple[str, ...]]:
        """Where a ``data.*`` request starts walking — the root — and the components down to ``source``, so
        that a directory of the root swapped for a symlink after the grant was checked is refused too."""
        if not self.root_path or not confined(self.root_path, self.source):
            return self.source, ()
        below = self.source[len(self.root_path.rstrip("/")) :].strip("/")
        return self.root_path, tuple(below.split("/")) if below else ()

    @property
    def mode(self) -> str:
        return "read" if self.read_only else "read_write"

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.rel.split("/")) if self.rel else ()


def components(path: str, what: str) -> tuple[str, ...]:
    """The components of a ``/``-separated path, refusing ``.``, ``..``, empty ones (``//``), NUL and
    control characters, over-long components and over-deep paths (the rule of
    :mod:`symbi_contracts.grant_paths`, which registration applies too). A trailing ``/`` is allowed."""
    try:
        return path_components(path, what)
    except BadPath as err:
        raise BadDataPath(str(err)) from None


def check_root_name(name: str) -> None:
    if not ROOT_NAME.match(name):
        raise BadDataPath(f"{name!r} is not a data root name: use 1-32 of a-z, 0-9, '-', '_', starting with a letter")


def match_grant(path: str, mode: str, roots: Mapping[str, DataRoot]) -> Grant:
    """The root and sub-path one grant names; :class:`GrantRefused` saying why it names none."""
    if mode not in MODES:
        raise GrantRefused(f"filesystem grant {path[:120]!r}: mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not path.startswith("/"):
        raise GrantRefused(f"filesystem grant {path[:120]!r} must be an absolute path")
    try:
        parts = components(path, "filesystem grant")
    except BadDataPath as err:
        raise GrantRefused(str(err)) from None
    writable = mode == "read_write"
    mount = components(DATA_MOUNT, "mount")
    if parts[: len(mount)] == mount:
        if len(parts) == len(mount):
            raise GrantRefused(f"filesystem grant {path!r} names no data root: write {DATA_MOUNT}/<root>[/<dir>]")
        name = parts[len(mount)]
        root = roots.get(name)
        if root is None:
            raise GrantRefused(f"filesystem grant {path!r}: this host has no data root {name!r} ({_known(roots)})")
        return Grant(root, parts[len(mount) + 1 :], writable, path)
    for root in roots.values():
        for base in {components(p, "data root") for p in (root.path, root.declared) if p}:
            if parts[: len(base)] == base:
                return Grant(root, parts[len(base) :], writable, path)
    raise GrantRefused(f"filesystem grant {path!r} is outside every data root of this host ({_known(roots)})")


def _known(roots: Mapping[str, DataRoot]) -> str:
    if not roots:
        return "it declares none: [sandbox] data_roots"
    return "its roots: " + ", ".join(f"{r.name} = {r.path}" for r in roots.values())


def confined(root_real: str, real: str) -> bool:
    """Whether the real path ``real`` is ``root_real`` or inside it (both already resolved)."""
    base = root_real.rstrip("/")
    return real == base or real.startswith(base + "/")


def mount_of(grant: Grant, real: str) -> DataMount:
    """The mount of a grant whose directory resolved to ``real``; refused if ``real`` left its root."""
    if not confined(grant.root.path, real):
        raise GrantRefused(
            f"filesystem grant {grant.requested!r} resolves to {real!r}, outside data root "
            f"{grant.root.name} ({grant.root.path}): a symlink may not lead out of a root"
        )
    return DataMount(
        root=grant.root.name,
        rel=grant.rel,
        source=real,
        target=grant.target,
        read_only=not grant.writable,
        classification=grant.root.classification,
        root_path=grant.root.path,
    )


def plan(mounts: Iterable[DataMount]) -> tuple[DataMount, ...]:
    """The mounts in the order they are made (a parent before what is mounted inside it); two grants of
    the same directory are refused (a definition grants each directory once, with one mode).

    A ``read`` grant inside a ``read_write`` grant — by its path in the sandbox or by its real directory on
    the host — is refused too: it could not stay read-only. Whoever can write the parent can rename the
    directory on the way to the child (only a mount point refuses a rename, and the child's parent is not
    one), which carries the child's read-only mount away and leaves the child's real directory reachable
    through the writable parent, by ``data.write`` as by any later mount of it."""
    seen: dict[str, DataMount] = {}
    for m in mounts:
        if m.target in seen:
            raise GrantRefused(f"two filesystem grants name {m.target}; grant each directory once")
        seen[m.target] = m
    for ro in seen.values():
        for rw in seen.values():
            if ro.read_only and not rw.read_only and (confined(rw.target, ro.target) or confined(rw.source, ro.source)):
                raise GrantRefused(
                    f"filesystem grant {ro.target} (mode read) lies inside {rw.target} (mode read_write) of the "
                    f"same definition: it cannot stay read-only, since whoever can write {rw.target} can move "
                    "a directory holding it (its mount goes along) and write its files; grant the parent "
                    "read, or grant read_write only directories that do not hold it"
                )
    return tuple(sorted(seen.values(), key=lambda m: (m.target.count("/"), m.target)))


def locate(path: str, mounts: Sequence[DataMount]) -> tuple[DataMount, tuple[str, ...]]:
    """The mount covering a ``data.*`` path (the deepest) and the components below it; :class:`BadDataPath`
    if the path is malformed or no grant covers it."""
    prefix = DATA_MOUNT + "/"
    given = path[len(prefix) :] if path.startswith(prefix) else path
    if given.startswith("/"):
        raise BadDataPath(f"{path[:120]!r} is outside {DATA_MOUNT}: name a path like <root>/<dir>/<file>")
    parts = components(given, "data path")
    best: DataMount | None = None
    for m in mounts:
        own = (m.root, *m.parts)
        if parts[: len(own)] == own and (best is None or len(own) > len(best.parts) + 1):
            best = m
    if best is None:
        granted = ", ".join(m.target for m in mounts) or "none"
        raise NotGranted(f"no filesystem grant of this agent covers {path[:120]!r} (its grants: {granted})")
    return best, parts[len(best.parts) + 1 :]
