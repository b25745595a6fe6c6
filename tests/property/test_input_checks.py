"""Checks of untrusted text mean what they say: whole values, ASCII digits.

Names and ids are checked against the whole value: a trailing newline is refused, never let through.

In Python's ``re`` (and so in msgspec's ``Meta(pattern=…)``), ``$`` also matches just before a final ``\\n``:
``^[A-Za-z0-9_-]{1,128}$`` accepts ``"A\\n"``. The OpenAPI fuzz found an agent id ``A%0A`` that passed the
lifecycle's check that way and failed only later, as a 500, when NATS refused the subject. The checks end in
``\\Z`` instead; this module tests the ones ids and names go through, and keeps any new ``^…$`` check out.

Numbers are ASCII digits: ``str.isdigit`` is true for ``'²'`` and other Unicode digits that ``int`` refuses, so
an ``isdigit`` check followed by ``int`` raised ``ValueError`` where the caller expected the typed error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from symbi_audit.erasure import _AGGREGATE_RE
from symbi_common.datakeys import split_key_id
from symbi_common.errors import KeyringError, ValidationError
from symbi_common.policy.cedar import SET_ID_RE
from symbi_common.secret_source import SECRET_NAME
from symbi_contracts.lifecycle.config import AgentConfig, Workload
from symbi_contracts.sandbox_agent.commands import TaskRef
from symbi_lifecycle.application import check_agent_id
from symbi_lifecycle.config import validate_config
from symbi_scheduler.domain import TASK_ID_RE
from symbi_tlog.errors import CheckpointInvalid, WitnessRequestMalformed
from symbi_tlog.notes import parse_checkpoint
from symbi_tlog.witness import parse_add_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _refused_by_msgspec(value: str) -> bool:
    try:
        msgspec.convert({"task_id": value}, TaskRef)
    except msgspec.ValidationError:
        return True
    return False


def _refused_agent_id(value: str) -> bool:
    try:
        check_agent_id(value)
    except ValidationError:
        return True
    return False


CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "lifecycle agent id": (_refused_agent_id, "agent-1"),
    "scheduler task id": (lambda v: TASK_ID_RE.match(v) is None, "task-1"),
    "sandbox command task id (msgspec pattern)": (_refused_by_msgspec, "task-1"),
    "policy set id": (lambda v: SET_ID_RE.match(v) is None, "baseline"),
    "secret name": (lambda v: SECRET_NAME.match(v) is None, "github/token"),
    "audit erasure aggregate": (lambda v: _AGGREGATE_RE.match(v) is None, "memory.agent-1"),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_valid_name_passes_and_the_same_with_a_trailing_newline_does_not(name: str) -> None:
    refused, valid = CHECKS[name]
    assert not refused(valid)
    assert refused(valid + "\n")
    assert refused(valid + "\r\n")


#: A raw string literal that starts with ``^`` and ends with ``$``: a regular expression over a whole value.
_CHECK = re.compile(r"""r(["'])\^[^"']*\$\1""")


def test_no_check_in_the_code_ends_in_a_dollar() -> None:
    """A pattern that starts with ``^`` is a whole-value check: it must end in ``\\Z`` or be used with
    ``re.fullmatch`` (``re.MULTILINE`` patterns, which match lines, and ones whose last part is ``\\s*`` anyway
    are the exceptions)."""
    found = []
    for folder in ("libs", "services", "cli", "sdk"):
        for path in (ROOT / folder).rglob("src/**/*.py"):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if _CHECK.search(line) and "MULTILINE" not in line and "\\s*$" not in line:
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_numbers_in_untrusted_text_are_ascii_digits() -> None:
    """Each of these was an ``isdigit`` check before an ``int``: a superscript two got past it."""
    with pytest.raises(CheckpointInvalid):  # a checkpoint note from a log or a witness
        parse_checkpoint("log.example\n\u00b2\nAAAA\n\n— log sig\n")
    with pytest.raises(WitnessRequestMalformed):  # a witness's add-checkpoint request
        parse_add_checkpoint("old \u00b2\n\nlog.example\n1\nAAAA\n\n— log sig\n".encode())
    with pytest.raises(KeyringError):
        split_key_id("task.t1/\u00b2")
    workload = Workload(image="symbi/busybox:1", command=("cat",))
    config = AgentConfig(name="a1", workload=workload, network_access=("api.example.com:\u00b2",))
    assert [i.field for i in validate_config(config)][:1] == ["network_access[0]"]  # an issue, not a crash
