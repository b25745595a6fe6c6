"""``symbi``'s sub-commands are imported when they run: a command pays only for the libraries it uses, and
every sub-command is still there, with its help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from symbi_cli.lazy_commands import LAZY_COMMANDS, load_command
from symbi_cli.main import app
from typer.testing import CliRunner

runner = CliRunner(env={"COLUMNS": "200"})

#: What `symbi keys show` runs without: the web stack, OpenTelemetry, the DSL parser, PostgreSQL's client.
HEAVY = ("fastapi", "uvicorn", "opentelemetry", "lark", "asyncpg", "jinja2")

PROBE = """
import sys
from typer.testing import CliRunner
from symbi_cli.main import app
result = CliRunner().invoke(app, ["keys", "show", "--dir", sys.argv[1]])
assert result.exit_code == 1 and "keys init" in result.output, result.output
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_a_command_imports_only_what_it_uses(tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, check=True)
    loaded = set(probe.stdout.split())
    assert "symbi_cli" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_every_sub_command_is_listed_loads_and_has_its_help() -> None:
    listed = runner.invoke(app, ["--help"])
    assert listed.exit_code == 0, listed.output
    for name in ("up", "demo", *LAZY_COMMANDS):
        assert f"│ {name} " in listed.output, name
    for name in LAZY_COMMANDS:
        command = load_command(name)
        assert command.name == name
        helped = runner.invoke(app, [name, "--help"])
        assert helped.exit_code == 0, (name, helped.output)
        assert f"Usage: symbi {name}" in helped.output
    # a group of one command stays a group, as before: `symbi nats provision`
    assert runner.invoke(app, ["nats", "provision", "--help"]).exit_code == 0
    unknown = runner.invoke(app, ["nosuch"])
    assert unknown.exit_code == 2
    assert "No such command 'nosuch'" in unknown.output
