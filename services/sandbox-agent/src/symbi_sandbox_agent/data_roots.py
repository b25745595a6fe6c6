"""The host side of filesystem grants: the operator's data roots checked at start-up, and a definition's
grants checked on the disk before they are mounted (the rules themselves are :mod:`.grants`, pure).

A root is refused at start-up — :class:`~symbi_common.errors.ConfigError` naming
``sandbox.data_roots.<name>`` — when its name is not a valid root name, its path is relative, missing or not a
directory, it is ``/``, it is inside one of the daemon's own directories, or it overlaps another root (one
inside the other: a grant would not know which root it belongs to). A grant is refused — the task's
``execution.refused`` with code ``grant_refused`` — when its directory does not exist, is not a directory, or
its real path leaves its root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from symbi_common.errors import ConfigError
from symbi_common.settings_sandbox import DataRootSettings
from symbi_contracts.lifecycle.config import PathAccess

from symbi_sandbox_agent.grants import (
    BadDataPath,
    DataMount,
    DataRoot,
    GrantRefused,
    check_root_name,
    confined,
    match_grant,
    mount_of,
    plan,
)


def load_roots(configured: Mapping[str, str | DataRootSettings], own: Iterable[str] = ()) -> dict[str, DataRoot]:
    """The data roots of ``[sandbox] data_roots``, each resolved to its real path; a bad one stops start-up.

    ``own``: the daemon's own directories (work, channels), which no root may be or lie inside."""
    roots: dict[str, DataRoot] = {}
    for name, value in configured.items():
        setting = f"sandbox.data_roots.{name}"
        path, classification = (value, "") if isinstance(value, str) else (value.path, value.classification)
        try:
            check_root_name(name)
        except BadDataPath as err:
            raise ConfigError(str(err), setting=setting) from None
        if not path.startswith("/"):
            raise ConfigError(f"{path!r} must be an absolute host path", setting=setting)
        if classification and not (classification.isprintable() and len(classification) <= 64):
            raise ConfigError("classification must be at most 64 printable characters", setting=setting)
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            raise ConfigError(f"{path!r} is not an existing directory on this host", setting=setting)
        if real == "/":
            raise ConfigError("the whole host filesystem cannot be a data root", setting=setting)
        for mine in own:
            mine_real = os.path.realpath(mine)
            if confined(mine_real, real) or confined(real, mine_real):
                raise ConfigError(f"{path!r} overlaps the daemon's own directory {mine}", setting=setting)
        for other in roots.values():
            if confined(other.path, real) or confined(real, other.path):
                raise ConfigError(
                    f"{path!r} overlaps data root {other.name} ({other.path}); roots must not nest", setting=setting
                )
        roots[name] = DataRoot(name, real, classification, path.rstrip("/") if real != path.rstrip("/") else "")
    return roots


def resolve(access: Iterable[PathAccess], roots: Mapping[str, DataRoot]) -> tuple[DataMount, ...]:
    """The mounts of a definition's grants, checked on the disk, in mounting order; :class:`GrantRefused`
    naming the first grant that cannot be mounted."""
    mounts = []
    for item in access:
        grant = match_grant(item.path, item.mode, roots)
        real = os.path.realpath(grant.host_path)
        mount = mount_of(grant, real)  # refused if a symlink led out of the root
        if not os.path.isdir(real):
            raise GrantRefused(f"filesystem grant {item.path!r}: {grant.host_path} is not an existing directory")
        mounts.append(mount)
    return plan(mounts)
