"""Typed errors of the sandbox-agent that other services receive: in replies to its commands
(``cmd.sandbox-agent.<host_id>.suspend|resume|terminate``) and as the ``code`` of ``execution.refused``.

A caller imports this module so that :func:`symbi_common.errors.from_wire` rebuilds these classes.
"""

from __future__ import annotations

from symbi_common.errors import DomainError, InfrastructureError, NotFound, PolicyDenied


class SandboxRefused(DomainError):
    """A task cannot run on this host as requested; the reason becomes its ``execution.refused`` event."""

    code = "sandbox_refused"


class LimitNotEnforceable(SandboxRefused):
    """A resource limit of the task cannot be enforced here, so the task is refused instead of running unlimited."""

    code = "limit_not_enforceable"


class TierUnavailable(SandboxRefused):
    """The task's tier needs a container runtime this host's Docker engine does not have."""

    code = "tier_unavailable"


class InvalidWorkload(SandboxRefused):
    """The task's workload (image, command, env, limits) is missing or malformed."""

    code = "invalid_workload"


class SecretDenied(SandboxRefused):
    """The policy did not allow the agent a secret its definition names (``secret.read`` on ``Secret::"<name>"``)."""

    code = "secret_denied"


class SecretMissing(SandboxRefused):
    """A secret the definition names is not in the secrets store (``symbi secrets set`` it)."""

    code = "secret_missing"


class SecretsUnavailable(SandboxRefused):
    """The task needs secrets but this host cannot hand them out (no secrets key, no store, not root)."""

    code = "secrets_unavailable"


class UnknownExecution(NotFound):
    """No execution of that task runs on this host."""

    code = "unknown_execution"


class ExecutionStateError(DomainError):
    """The execution is not in a state that allows the command (e.g. resume of a running task)."""

    code = "execution_state"
    http_status = 409


class DockerUnavailable(InfrastructureError):
    """The Docker engine cannot be reached or refused an operation."""

    code = "docker_unavailable"


class ActionDenied(PolicyDenied):
    """A pending action of a suspended task is still denied by the policies, so the task cannot resume."""

    code = "action_denied"
