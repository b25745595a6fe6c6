"""The agent image (``runtime.agent_image``, default ``symbi/agent-python:1``): Python, the agent SDK and the
DSL body runner. DSL bodies run in it and the SDK examples name it, so ``symbi up`` makes sure it exists, up to
date, before the sandbox-agent starts.

``deploy/host/agent-image.sh`` does the work: it keeps an image whose content label (``org.symbi.content``:
the script, the SDK, symbi_dsl, the Python version) matches the checkout's and builds it otherwise, so a
second start costs a ``docker image inspect``. An installation without the script (no checkout) can only check
that the image is there.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from symbi_common.errors import ConfigError
from symbi_common.settings import load_settings

from symbi_cli.errors import StartError

#: The checkout's build script (the CLI is installed from the workspace, editable).
SCRIPT = Path(__file__).resolve().parents[3] / "deploy" / "host" / "agent-image.sh"
#: A build copies the Python standard library into an image: a minute at most on a loaded host.
BUILD_TIMEOUT_S = 600.0


class AgentImageError(StartError):
    """The agent image is missing and could not be built; the message says why and what to run."""


def configured_agent_image(env: Mapping[str, str]) -> str | None:
    """``runtime.agent_image`` of the configuration ``env`` names; None when the configuration is broken (the
    services report that themselves, naming the setting)."""
    try:
        return load_settings(env=env).runtime.agent_image
    except ConfigError:
        return None


def ensure_agent_image(tag: str, env: Mapping[str, str], script: Path = SCRIPT) -> str:
    """Make sure ``tag`` exists with the checkout's content; what was done, for the start-up report.

    :class:`AgentImageError` when the script fails, or (without a script) when the image is missing.
    """
    if not script.is_file():
        if _image_exists(tag, env):
            return f"agent image {tag} (present; no {script.name} here to check its content)"
        raise AgentImageError(
            f"the agent image {tag} is missing and this installation has no {script.name} to build it; "
            f"build it from a checkout (deploy/host/agent-image.sh {tag}) or set runtime.agent_image"
        )
    try:
        proc = subprocess.run(
            [str(script), tag], env=dict(env), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise AgentImageError(f"building the agent image {tag} took over {BUILD_TIMEOUT_S:g} s") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise AgentImageError(f"the agent image {tag} could not be built ({SCRIPT.name}): {why}")
    return f"agent image {tag} {'built' if 'built' in proc.stdout else 'up to date'}"


def _image_exists(tag: str, env: Mapping[str, str]) -> bool:
    proc = subprocess.run(
        ["docker", "image", "inspect", tag], env=dict(env), capture_output=True, timeout=60, check=False
    )
    return proc.returncode == 0
