"""The DSL runner's builtins are exactly what registration lets a body call (``symbi_dsl.body``), each one an
SDK action; the runner's exit statuses for a body that cannot run. (Bodies that act run end to end, against
a real gateway in real containers, in services/sandbox-agent/tests/test_dsl_run.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from symbi_agent import Agent
from symbi_agent.dsl_run import builtins, main
from symbi_dsl.body import AREAS, BUILTINS


def test_the_builtins_are_the_vocabulary_registration_checks_against() -> None:
    with Agent(stdio=True) as agent:
        names = builtins(agent)
        assert set(names) == set(AREAS) | set(BUILTINS)
        assert names["memory"]["store"] == agent.memory.store
        assert names["tools"]["call"] == agent.tools.call
        assert set(names["messages"]) >= {"send", "publish", "request", "reply", "receive", "subscribe"}
        assert names["now"]().endswith("+00:00")


@pytest.mark.parametrize(
    ("source", "status", "stderr"),
    [
        ("agent a {\n  with {\n    return 1 +\n  }\n}\n", 2, "error[syntax]"),
        (
            "agent a {\n  with steps = 3 {\n    let x = [1, 2, 3].map(i => i * 2)\n  }\n}\n",
            1,
            "a.symbi:3:13: the body ran",
        ),
        ("agent a {\n  with {\n    let x = [1, 2]\n    x.nope()\n  }\n}\n", 1, "a.symbi:4:5: a list has no"),
        ("agent a {\n  with {\n    let x = 1\n  }\n}\nagent b {\n  with {\n    let y = 2\n  }\n}\n", 2, "2 agents"),
    ],
)
def test_a_body_that_cannot_run_exits_with_its_reason_on_stderr(
    source: str,
    status: int,
    stderr: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "a.symbi").write_text(source)
    (tmp_path / "input").write_text("")
    monkeypatch.setenv("SYMBI_INPUT", str(tmp_path / "input"))
    monkeypatch.setenv("SYMBI_DSL_FILE", "a.symbi")
    monkeypatch.delenv("SYMBI_SOCKET", raising=False)
    monkeypatch.delenv("SYMBI_DSL_STEPS", raising=False)
    assert main([str(tmp_path / "a.symbi")]) == status
    out = capsys.readouterr()
    assert out.out == ""
    assert stderr in out.err
