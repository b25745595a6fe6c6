"""An agent config's ``mcp_servers`` are checked at registration by the rules the DSL and the sandbox-agent
use (``symbi_contracts.tools.declarations``), each issue naming its field."""

from __future__ import annotations

import pytest
from symbi_common.errors import BadRequest
from symbi_lifecycle.config import convert_config, validate_config

PINNED = "sha256:" + "b" * 64


def test_declared_servers_are_validated_by_field() -> None:
    good = {"name": "files", "image": PINNED, "command": ["python3", "/opt/s.py"], "domain": "tools.example.com"}
    config = convert_config({"name": "files-user", "mcp_servers": [good]})
    assert config.mcp_servers[0].transport == "stdio"
    assert validate_config(config) == []
    bad = convert_config(
        {"name": "files-user", "mcp_servers": [good, {"name": "files", "image": "python:3", "command": ["x"]}]}
    )
    assert [(i.field, "twice" in i.message or "digest" in i.message) for i in validate_config(bad)] == [
        ("mcp_servers[1].name", True),
        ("mcp_servers[1].image", True),
    ]


def test_an_unknown_field_of_a_declared_server_is_refused() -> None:
    with pytest.raises(BadRequest, match="approved"):
        convert_config(
            {"name": "files-user", "mcp_servers": [{"name": "files", "url": "https://h/mcp", "approved": 1}]}
        )
