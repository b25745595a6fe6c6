"""The catalogue of subjects says what the code does, and docs/subjects.md is the catalogue as drawn now."""

from __future__ import annotations

from pathlib import Path

import pytest
from symbi_audit.erasure import CODEC as AUDIT_CODEC
from symbi_common.entitlements import SERVICE_SUBJECTS
from symbi_common.events import EventCodec
from symbi_common.policy.events import DECISION_LOG_CODEC, POLICY_SET_CODEC
from symbi_context.domain import KNOWLEDGE, MEMORY
from symbi_context.index import SUBJECTS as CONTEXT_FOLLOWS
from symbi_contracts.diagram import COMMAND, render
from symbi_contracts.models.events import CODEC as BUDGET_CODEC
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, HOST_CODEC
from symbi_contracts.subjects import CATALOGUE, CLI, SERVICES, EventVersion, Subject, find, versions
from symbi_contracts.tools.events import CODEC as TOOLSERVER_CODEC
from symbi_lifecycle.domain import AGENT
from symbi_lifecycle.projections import AgentProjection
from symbi_scheduler.domain import TASK
from symbi_scheduler.follower import SUBJECTS as SCHEDULER_FOLLOWS
from symbi_scheduler.schedules import CODEC as SCHEDULE_CODEC

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "subjects.md"

#: The codec the owner of each event subject writes with.
WRITTEN_WITH: dict[str, EventCodec] = {  # type: ignore[type-arg]
    "evt.agent.<agent_id>": AGENT.codec,
    "evt.task.<task_id>": TASK.codec,
    "evt.schedule.<agent_id>": SCHEDULE_CODEC,
    "evt.execution.<task_id>": EXECUTION_CODEC,
    "evt.host.<host_id>": HOST_CODEC,
    "evt.toolserver.<server>": TOOLSERVER_CODEC,
    "evt.budget.<YYYYMMDD>-<tenant>": BUDGET_CODEC,
    "evt.policy.<set_id>": POLICY_SET_CODEC,
    "evt.policy.decisions.<source>": DECISION_LOG_CODEC,
    "evt.memory.<owner>": MEMORY.codec,
    "evt.knowledge.<kb_id>": KNOWLEDGE.codec,
    "evt.audit.<record_id>": AUDIT_CODEC,
}
EVENT_SUBJECTS = [s for s in CATALOGUE if s.kind == "events"]


def test_the_committed_page_is_the_catalogue_drawn_now() -> None:
    assert PAGE.read_text() == render(), f"docs/subjects.md is stale: run `uv run {COMMAND}`"


def test_a_changed_catalogue_draws_a_different_page() -> None:
    extra = Subject(
        "events", "evt.widget.<id>", "context", ("scheduler",), "widgets", (EventVersion("widget.made", 2),)
    )
    page = render((*CATALOGUE, extra))
    assert page != render()
    assert "`widget.made` v2" in page
    assert 'context -- "evt.memory.*<br/>evt.knowledge.*" --> audit' in page


def test_every_event_stream_is_in_the_catalogue() -> None:
    assert sorted(s.subject for s in EVENT_SUBJECTS) == sorted(WRITTEN_WITH)


@pytest.mark.parametrize("subject", EVENT_SUBJECTS, ids=lambda s: s.subject)
def test_event_types_and_versions_are_those_the_owner_writes(subject: Subject) -> None:
    assert subject.events == versions(WRITTEN_WITH[subject.subject].types)


@pytest.mark.parametrize("subject", EVENT_SUBJECTS, ids=lambda s: s.subject)
def test_the_owner_is_the_service_whose_key_may_sign_the_subject(subject: Subject) -> None:
    aggregate = subject.subject.split(".")[1]
    assert f"evt.{aggregate}.>" in SERVICE_SUBJECTS[subject.owner]


def test_owners_and_readers_are_known_services() -> None:
    for s in CATALOGUE:
        assert s.owner in SERVICES, s
        assert s.readers, s
        assert set(s.readers) <= {*SERVICES, CLI}, s


@pytest.mark.parametrize(
    ("service", "follows"),
    [
        ("scheduler", SCHEDULER_FOLLOWS),
        ("context", CONTEXT_FOLLOWS),
        ("lifecycle", tuple(AgentProjection.filter_subjects)),
    ],
)
def test_what_a_service_follows_is_in_the_catalogue_as_its_own_or_read_by_it(
    service: str, follows: tuple[str, ...]
) -> None:
    for subject_filter in follows:
        entry = find(subject_filter)
        assert service == entry.owner or service in entry.readers, (service, subject_filter)


def test_a_filter_names_the_family_of_subjects() -> None:
    assert find("evt.agent.>").subject == "evt.agent.<agent_id>"
    assert find("audit.alert").kind == "notice"
    with pytest.raises(KeyError, match=r"evt\.nothing"):
        find("evt.nothing.>")


def _command_subjects(entry: Subject) -> list[str]:
    """``cmd.sandbox-agent.<host_id>.suspend|resume`` → the NATS subjects, with ``*`` for a variable token."""
    prefix, _, actions = entry.subject.rpartition(".")
    tokens = ["*" if t.startswith("<") else t for t in prefix.split(".")]
    return [".".join([*tokens, action]) for action in actions.split("|")]


def test_nats_command_permissions_are_the_catalogues_callers() -> None:
    """Each service may call exactly the other services' commands the catalogue names it a caller of."""
    from symbi_common.natsauth import COMMAND_CALLS

    expected: dict[str, set[str]] = {service: set() for service in SERVICES}
    for entry in CATALOGUE:
        if entry.kind != "command":
            continue
        for caller in entry.readers:
            if caller != CLI and caller != entry.owner:
                expected[caller].update(_command_subjects(entry))
    granted = {
        service: {c for c in calls if not c.startswith(f"cmd.{service}.")} for service, calls in COMMAND_CALLS.items()
    }
    assert granted == expected


def test_a_command_names_its_typed_body_per_action_or_one_for_all() -> None:
    """The commands between services whose bodies the contracts type: each has one per action, or one for all."""
    typed = {s.subject: s for s in CATALOGUE if s.kind == "command" and s.bodies}
    assert {
        "cmd.lifecycle.suspend",
        "cmd.context.store|retrieve|forget|ingest|search_knowledge",
        "cmd.lifecycle.assign_task|complete_task",
    } <= set(typed)
    for entry in typed.values():
        actions = entry.subject.rpartition(".")[2].split("|")
        assert len(entry.bodies) in (1, len(actions)), entry.subject
        for body in entry.bodies:
            assert body.__struct_config__.forbid_unknown_fields, f"{body.__name__} must refuse unknown keys"
