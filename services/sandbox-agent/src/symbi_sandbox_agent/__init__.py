"""Symbi sandbox-agent: the per-host daemon that runs each task's workload in a hardened container.

Layers, each importing only those before it:

- pure (no I/O): :mod:`tasks` (reading the scheduler's task events),
  :mod:`spec` (limits and hardening of one sandbox), :mod:`output` (output chunking and digest),
  :mod:`actions` (the action gateway's requests and replies), :mod:`domain` (the execution state
  machine, the host log, the terminal-event rule), :mod:`config` (the ``[sandbox]`` settings);
- ports: :mod:`runner` (the engine and the per-runtime runner protocols); :mod:`docker_host` (the engine) and
  :mod:`docker_runners` (runc, runsc: gVisor) implement them on Docker; :mod:`cgroups` reads a sandbox's usage;
- application: :mod:`run` (one running sandbox), :mod:`recorder` (appending execution events),
  :mod:`gateway` (the action gateway of a run), :mod:`supervisor` (running one sandbox),
  :mod:`application` (work items and commands: the write path);
- the host: :mod:`host` (start-up, reconciliation, heartbeat, work consumer), :mod:`api`, :mod:`main`.

What other services read from it (its events, the errors of its commands, the tier choice by risk) is its
contract, :mod:`symbi_contracts.sandbox_agent`.
"""
