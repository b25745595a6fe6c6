"""Who may decrypt each aggregate type agrees with the catalogue of subjects (symbi_contracts.subjects)."""

from __future__ import annotations

from symbi_common.entitlements import AGGREGATE_READERS, SERVICE_SUBJECTS, readers_of, writer_of
from symbi_contracts.subjects import CATALOGUE, CLI


def test_payload_readers_are_the_catalogued_readers_of_each_event_family() -> None:
    families = {s.filter.split(".")[1]: s for s in CATALOGUE if s.kind == "events" and s.filter.count(".") == 2}
    assert set(families) == set(AGGREGATE_READERS)
    for aggregate_type, entry in families.items():
        assert writer_of(aggregate_type) == entry.owner, aggregate_type
        # The command line verifies without data keys; the audit service reads every payload.
        catalogued = {r for r in entry.readers if r != CLI} | {"audit"} - {entry.owner}
        assert set(readers_of(aggregate_type)) - {entry.owner} == catalogued, aggregate_type
    assert {writer_of(t) for t in AGGREGATE_READERS} == set(SERVICE_SUBJECTS)
