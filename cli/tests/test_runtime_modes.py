"""``symbi up``'s runtime files: nothing that holds content or keys is readable by group or others."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_cli.supervisor import ServiceSpec, Supervisor
from symbi_common.keyfiles import PUBLIC_FILES

#: Group and other bits that would let someone else read, list or change a file or directory.
_WIDE = stat.S_IRWXG | stat.S_IRWXO


def _too_wide(home: Path) -> list[str]:
    """Every path under ``home`` that group or others may read or write (public key files aside)."""
    found = []
    for root, dirs, files in os.walk(home):
        for name in [*dirs, *files]:
            path = Path(root) / name
            st = path.lstat()
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
                continue  # a server's socket (inside a 0700 directory) or a link: no content of its own
            if stat.S_ISREG(st.st_mode) and name in PUBLIC_FILES and "keys" in path.relative_to(home).parts:
                continue  # root.pub and the signed registry are public by design (inside the 0700 keyring)
            if stat.S_IMODE(st.st_mode) & _WIDE:
                found.append(f"{path.relative_to(home)} {stat.S_IMODE(st.st_mode):04o}")
    return found


async def test_after_start_nothing_under_the_home_is_group_or_world_accessible(
    runtime_home: Path, free_base_port: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    rt = LocalRuntime(RuntimeOptions(home=runtime_home, services=[], base_port=free_base_port, nats_port=None, env=env))
    await rt.start()
    try:
        assert (runtime_home / "logs" / "nats.log").exists()
        assert (runtime_home / "nats" / "jetstream").is_dir()  # the streams' files exist by now (provisioned)
        assert _too_wide(runtime_home) == []
        # The home itself: others may at most traverse it (PostgreSQL runs as its own user when we are root).
        assert stat.S_IMODE(os.stat(runtime_home).st_mode) & 0o066 == 0
    finally:
        await rt.stop()
    assert _too_wide(runtime_home) == []


async def test_supervised_services_run_with_umask_077(tmp_path: Path) -> None:
    script = "import os, pathlib; m = os.umask(0); os.umask(m); print(oct(m)); pathlib.Path('made').write_text('x')"
    lines: list[str] = []
    spec = ServiceSpec(name="probe", argv=[sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path)
    sup = Supervisor([spec], on_output=lambda _name, line: lines.append(line))
    await sup.start()
    try:
        for _ in range(200):
            if (tmp_path / "made").exists() and lines:
                break
            await asyncio.sleep(0.05)
    finally:
        await sup.stop()
    assert lines[0] == "0o77"
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o600
