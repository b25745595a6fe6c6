"""``symbi dsl check`` and ``symbi dsl fmt`` as a user runs them (typer's runner, real files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from symbi_cli.dsl_cmd import dsl_app
from typer.testing import CliRunner

EXAMPLES = Path(__file__).parents[2] / "examples" / "agents"
BROKEN = """agent a() {
  capabilites = ["web.fetch"]
  with timeout = 90000h { }
}
"""

runner = CliRunner()


def test_check_passes_on_every_example() -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.symbi"))
    result = runner.invoke(dsl_app, ["check", *files])
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok (") == len(files)


def test_check_reports_every_problem_with_caret_and_hint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.symbi"
    bad.write_text(BROKEN)
    result = runner.invoke(dsl_app, ["check", str(bad)])
    assert result.exit_code == 1
    out = result.output
    assert f"{bad}:2:3: error[unknown_key]: unknown key 'capabilites' in agent a" in out
    assert "      |   ^^^^^^^^^^^" in out
    assert "hint: did you mean 'capabilities'?" in out
    assert f"{bad}:3:18: error[range]: 90000h is out of range" in out
    assert f"{bad}: 2 error(s), 0 warning(s)" in out


SYMBIONT_STYLE = """metadata {
  version = "1.0"
}

agent greeter {
  capabilities = ["greet"]
  with sandbox = "Tier1", timeout = 5000 {
    let name = "world";
    log("INFO", "hello " + name);
  }
}
"""


def test_warnings_print_with_caret_and_exit_0_unless_strict(tmp_path: Path) -> None:
    path = tmp_path / "greeter.symbi"
    path.write_text(SYMBIONT_STYLE)
    result = runner.invoke(dsl_app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"{path}:2:13: warning[value]: version should be like 1.2.3, got '1.0'; it is ignored" in out
    assert "hint: write 1.0.0" in out
    assert f"{path}:7:18: warning[value]: write the sandbox as tier1" in out
    assert '    7 |   with sandbox = "Tier1", timeout = 5000 {\n      |                  ^^^^^^^' in out
    assert f"{path}: ok (greeter), 3 warning(s)" in out

    strict = runner.invoke(dsl_app, ["check", "--strict", str(path)])
    assert strict.exit_code == 1
    assert f"{path}:2:13: error[value]: version should be like 1.2.3" in strict.output
    assert f"{path}: 3 error(s), 0 warning(s)" in strict.output


def test_check_json_for_editors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.symbi"
    bad.write_text(BROKEN)
    good = EXAMPLES / "hello.symbi"
    result = runner.invoke(dsl_app, ["check", "--json", str(good), str(bad)])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report[0] == {"file": str(good), "ok": True, "agents": ["hello_agent"], "diagnostics": []}
    assert report[1]["ok"] is False
    first = report[1]["diagnostics"][0]
    assert {k: first[k] for k in ("code", "line", "column", "length", "hint")} == {
        "code": "unknown_key",
        "line": 2,
        "column": 3,
        "length": 11,
        "hint": "did you mean 'capabilities'?",
    }


def test_check_refuses_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    binary = tmp_path / "blob.symbi"
    binary.write_bytes(b"agent \xff\xfe")
    result = runner.invoke(dsl_app, ["check", str(binary), str(tmp_path / "missing.symbi")])
    assert result.exit_code == 1
    assert "error[encoding]: not UTF-8 text" in result.output
    assert "error[io]: cannot read the file" in result.output


def test_fmt_check_and_rewrite(tmp_path: Path) -> None:
    canonical = tmp_path / "hello.symbi"
    shutil.copy(EXAMPLES / "hello.symbi", canonical)
    messy = tmp_path / "messy.symbi"
    messy.write_text('agent   a( ){capabilities=["x.y"]   # note\n}\n')

    result = runner.invoke(dsl_app, ["fmt", "--check", str(canonical), str(messy)])
    assert result.exit_code == 1
    assert f"{messy}: not formatted" in result.output
    assert str(canonical) not in result.output
    assert messy.read_text().startswith("agent   a")  # --check changes nothing

    result = runner.invoke(dsl_app, ["fmt", str(canonical), str(messy)])
    assert result.exit_code == 0, result.output
    assert messy.read_text() == 'agent a() {\n  capabilities = ["x.y"]  # note\n}\n'
    assert runner.invoke(dsl_app, ["fmt", "--check", str(messy)]).exit_code == 0


def test_fmt_refuses_what_does_not_parse(tmp_path: Path) -> None:
    bad = tmp_path / "bad.symbi"
    bad.write_text("agent a( {")
    result = runner.invoke(dsl_app, ["fmt", str(bad)])
    assert result.exit_code == 1
    assert "error[syntax]" in result.output
    assert bad.read_text() == "agent a( {"
