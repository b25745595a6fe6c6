"""Typed errors of Symbi: one root, a domain branch and an integrity/infrastructure branch.

Every error carries a message that says what is wrong and, where possible, what to do about it.
Errors that cross a service boundary are serialised with :func:`to_wire` and rebuilt with
:func:`from_wire`, keeping their code and attributes.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SymbiError(Exception):
    """Root of every error raised by Symbi code."""

    code: ClassVar[str] = "symbi_error"
    #: HTTP status used when the error reaches an HTTP API.
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


# --- domain --------------------------------------------------------------------------------------


class DomainError(SymbiError):
    """A command was refused by the domain rules; retrying the same command will not help."""

    code = "domain_error"
    http_status = 422


class ValidationError(DomainError):
    """Input failed validation; ``field`` names the offending field (dotted path)."""

    code = "validation_error"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.field = field


class IllegalTransition(DomainError):
    """A command is not allowed in the aggregate's current state."""

    code = "illegal_transition"
    http_status = 409

    def __init__(self, *, state: str, command: str, allowed: list[str] | None = None) -> None:
        hint = f"; allowed in {state}: {', '.join(allowed)}" if allowed else f"; nothing is allowed in {state}"
        super().__init__(f"cannot {command} an agent in state {state}{hint}", state=state, command=command)
        self.state = state
        self.command = command


class NotFound(DomainError):
    """The addressed aggregate or record does not exist."""

    code = "not_found"
    http_status = 404


class AlreadyExists(DomainError):
    """An aggregate with this id already exists."""

    code = "already_exists"
    http_status = 409


class PolicyDenied(DomainError):
    """A policy decision denied the action; ``reason`` and ``policies`` say which policies decided."""

    code = "policy_denied"
    http_status = 403

    def __init__(
        self, message: str, *, action: str, policies: list[str] | None = None, policy_version: int = 0
    ) -> None:
        super().__init__(message, action=action, policies=list(policies or ()), policy_version=policy_version)
        self.action = action
        self.policies = list(policies or ())
        self.policy_version = policy_version


class Unauthenticated(SymbiError):
    """A request to an API carries no valid operator credential (missing, malformed, expired or revoked token)."""

    code = "unauthenticated"
    http_status = 401


# --- integrity (verification of stored events) ---------------------------------------------------


class IntegrityError(SymbiError):
    """A stored event failed verification. ``sequence`` and ``subject`` locate it in the stream."""

    code = "integrity_error"
    http_status = 500

    def __init__(self, message: str, *, sequence: int | None = None, subject: str | None = None) -> None:
        where = ""
        if subject is not None or sequence is not None:
            where = f" (subject {subject}, stream sequence {sequence})"
        super().__init__(message + where, sequence=sequence, subject=subject)
        self.sequence = sequence
        self.subject = subject


class MalformedEvent(IntegrityError):
    """The stored bytes are not a well-formed sealed event."""

    code = "malformed_event"


class SubjectMismatch(IntegrityError):
    """The event's header names another aggregate than the subject it was stored under."""

    code = "subject_mismatch"


class UnknownSigningKey(IntegrityError):
    """The event is signed by a key id that is not in the key registry."""

    code = "unknown_signing_key"


class UnauthorisedSigner(IntegrityError):
    """The signing key exists but is not authorised for the event's subject."""

    code = "unauthorised_signer"


class KeyRevoked(UnauthorisedSigner):
    """The signing key was revoked in the key registry before the event's stream position."""

    code = "key_revoked"


class BadSignature(IntegrityError):
    """The Ed25519 signature does not match the stored header and ciphertext."""

    code = "bad_signature"


class BrokenChain(IntegrityError):
    """``prev_hash`` does not equal the hash of the aggregate's previous stored event."""

    code = "broken_chain"


class VersionGap(IntegrityError):
    """The aggregate version does not follow the previous event's version by exactly one."""

    code = "version_gap"


class DecryptionFailed(IntegrityError):
    """The payload could not be decrypted (wrong key, or ciphertext/header tampered with)."""

    code = "decryption_failed"


class UnknownEventType(IntegrityError):
    """The payload's event type is not known to this service's decoder."""

    code = "unknown_event_type"


# --- keys ----------------------------------------------------------------------------------------


class KeyringError(SymbiError):
    """A key or key registry problem (missing file, bad registry signature, destroyed data key)."""

    code = "key_error"


class RegistrySignatureInvalid(KeyringError):
    """The key registry is not signed by the pinned root key."""

    code = "registry_signature_invalid"


class RegistryRollback(KeyringError):
    """A key registry version offered to a running service is not newer than the one in use."""

    code = "registry_rollback"

    def __init__(self, message: str, *, offered: int, current: int) -> None:
        super().__init__(message, offered=offered, current=current)
        self.offered = offered
        self.current = current


class SigningKeyRefused(KeyringError):
    """This service's signing key may not sign any more (revoked, or not in the key registry)."""

    code = "signing_key_refused"


class DataKeyDestroyed(KeyringError):
    """The data key was destroyed (crypto-shredded); the payload can no longer be read."""

    code = "data_key_destroyed"
    http_status = 410


class DataKeyNotEntitled(KeyringError):
    """This service's wrap key has no sealed copy of the data key: it is not entitled to read it."""

    code = "data_key_not_entitled"
    http_status = 403


# --- infrastructure ------------------------------------------------------------------------------


class InfrastructureError(SymbiError):
    """A dependency (NATS, PostgreSQL, disk) failed; the same request may succeed later."""

    code = "infrastructure_error"
    http_status = 503


class ConcurrencyConflict(InfrastructureError):
    """Another writer appended to the aggregate first (optimistic concurrency)."""

    code = "concurrency_conflict"
    http_status = 409

    def __init__(self, message: str, *, subject: str, expected: int, actual: int | None = None) -> None:
        super().__init__(message, subject=subject, expected=expected, actual=actual)
        self.subject = subject
        self.expected = expected
        self.actual = actual


class PayloadTooLarge(DomainError):
    """An event or command payload exceeds the configured size limit."""

    code = "payload_too_large"
    http_status = 413

    def __init__(self, *, size: int, limit: int, what: str = "payload") -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes", size=size, limit=limit)
        self.size = size
        self.limit = limit


class AppendFailed(InfrastructureError):
    """The event store refused or could not confirm an append."""

    code = "append_failed"


class Timeout(InfrastructureError):
    """A request did not get an answer in time."""

    code = "timeout"
    http_status = 504


class StaleRead(InfrastructureError):
    """No replica of a stream returned a subject's messages up to a sequence this process already saw there."""

    code = "stale_read"


class ConfigError(SymbiError):
    """A setting is missing or invalid; ``setting`` names it."""

    code = "config_error"

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(f"setting {setting}: {message}", setting=setting)
        self.setting = setting


class BadRequest(SymbiError):
    """A request could not be decoded (malformed JSON/msgpack, wrong types)."""

    code = "bad_request"
    http_status = 400


# --- wire form -----------------------------------------------------------------------------------


def _all_subclasses(cls: type[SymbiError]) -> list[type[SymbiError]]:
    out: list[type[SymbiError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_class(code: str) -> type[SymbiError]:
    """The error class registered under ``code`` (the root class for unknown codes)."""
    for cls in _all_subclasses(SymbiError):
        if cls.code == code:
            return cls
    return SymbiError


def to_wire(err: SymbiError) -> dict[str, Any]:
    """A JSON-able description of ``err`` for replies and HTTP bodies."""
    return {"code": err.code, "message": err.message, "details": err.details}


def from_wire(body: dict[str, Any]) -> SymbiError:
    """Rebuild an error sent with :func:`to_wire`; its class is found by code."""
    cls = error_class(str(body.get("code", "")))
    err = SymbiError.__new__(cls)
    SymbiError.__init__(err, str(body.get("message", "")), **dict(body.get("details") or {}))
    for key, value in (body.get("details") or {}).items():
        setattr(err, key, value)
    return err
