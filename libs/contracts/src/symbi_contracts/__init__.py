"""The contracts between Symbi's services: the only thing services share besides ``symbi_common``.

Per owning service, the event types (msgspec tagged unions) and command payloads that *other* services
consume, with the subjects they travel on and their schema versions:

- :mod:`symbi_contracts.lifecycle` — the agent configuration, the ``agent.*`` events and the commands other
  services send it;
- :mod:`symbi_contracts.scheduler` — the ``task.*`` events;
- :mod:`symbi_contracts.policy` — the command the lifecycle sends the policy service;
- :mod:`symbi_contracts.sandbox_agent` — the ``execution.*`` and ``host.*`` events, its commands and their
  typed errors, and the risk assessment that picks a task's sandbox tier;
- :mod:`symbi_contracts.subjects` — the catalogue of subjects between services (who writes, who reads),
  from which :mod:`symbi_contracts.diagram` draws ``docs/subjects.md``.

Everything here is pure (no I/O): a service imports its own contract and those it consumes, never another
service. ``tests/test_import_rules.py`` fails the build otherwise.
"""
