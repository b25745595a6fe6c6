"""``symbi up``'s agent image step: the build script's failure, or a missing image where there is no script,
stops the start with a typed error saying why; an image the script finds up to date is reported as such."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from symbi_cli.agent_image import AgentImageError, configured_agent_image, ensure_agent_image


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent-image.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_failed_build_is_a_typed_error_with_the_scripts_reason(tmp_path: Path) -> None:
    failing = script(tmp_path, 'echo "agent-image: symbi/busybox:1 is missing" >&2; exit 1')
    with pytest.raises(AgentImageError, match=r"could not be built.*symbi/busybox:1 is missing"):
        ensure_agent_image("symbi/agent-python:test", os.environ, failing)


def test_what_the_script_did_is_reported(tmp_path: Path) -> None:
    assert ensure_agent_image("x/y:1", os.environ, script(tmp_path, "exit 0")) == "agent image x/y:1 up to date"
    built = script(tmp_path, 'echo "agent-image: built $1"')
    assert ensure_agent_image("x/y:1", os.environ, built) == "agent image x/y:1 built"


def test_without_the_script_a_missing_image_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(AgentImageError, match=r"is missing and this installation has no agent-image\.sh"):
        ensure_agent_image("symbi/no-such-agent-image:0", os.environ, tmp_path / "agent-image.sh")


def test_the_tag_comes_from_the_configuration() -> None:
    assert configured_agent_image({}) == "symbi/agent-python:1"
    assert configured_agent_image({"SYMBI_RUNTIME__AGENT_IMAGE": "acme/agent:2"}) == "acme/agent:2"
    assert configured_agent_image({"SYMBI_RUNTIME__MODE": "nonsense"}) is None
