"""Errors of the ``symbi`` command: one root, so ``main`` can print any of them as a one-line message."""

from __future__ import annotations


class CliError(Exception):
    """Root of the CLI's errors; the message tells the user what went wrong and what to do."""


class StartError(CliError):
    """The local runtime could not start."""


class SupervisorError(CliError):
    """A supervised service did not come up; the message says which and shows its last output."""


class DemoError(CliError):
    """A step of ``symbi demo`` did not do what it should."""


class InfraError(RuntimeError):
    """A local server could not be found, started or used."""
