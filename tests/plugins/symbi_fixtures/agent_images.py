"""The agent image the tests and benchmarks run agents in (``deploy/host/agent-image.sh``).

Tagged by what it is made of — the script, the SDK, the DSL runner's sources and the versions of lark and
msgspec — so a change to any of them gets a fresh image and unchanged sources reuse the one built before.
"""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "deploy" / "host" / "agent-image.sh"
SOURCES = (
    SCRIPT,
    ROOT / "sdk" / "python" / "src" / "symbi_agent",
    ROOT / "libs" / "dsl" / "src" / "symbi_dsl",
    ROOT / "libs" / "common" / "src" / "symbi_common" / "errors.py",
)


def agent_image_tag() -> str:
    digest = hashlib.sha256()
    for source in SOURCES:
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.suffix in (".py", ".lark"))
        for path in files:
            digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    for dist in ("lark", "msgspec"):
        digest.update(f"{dist}=={metadata.version(dist)}".encode())
    return f"symbi/agent-python:sdk-{digest.hexdigest()[:12]}"


def build_agent_image() -> str:
    """The image's tag, built first unless an image of the same content exists (a few seconds)."""
    tag = agent_image_tag()
    subprocess.run([str(SCRIPT), tag], check=True, capture_output=True)
    return tag
