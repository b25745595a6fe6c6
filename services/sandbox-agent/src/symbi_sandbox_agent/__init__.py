"""Symbi sandbox-agent: the per-host daemon that runs each task's workload in a hardened container.

Pure parts (no I/O): :mod:`spec` (limits and hardening of one sandbox),
:mod:`output` (output chunking and digest), :mod:`execution` (the execution aggregate), :mod:`tasks`
(reading the scheduler's task events). I/O: :mod:`docker_host` (Docker SDK), :mod:`agent` (NATS,
JetStream, event store), :mod:`api` and :mod:`main`. What other services read from it (its events, the errors
of its commands, the tier choice by risk) is its contract, :mod:`symbi_contracts.sandbox_agent`.
"""
