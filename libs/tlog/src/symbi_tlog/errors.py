"""Typed errors of log verification, each on the ``symbi_common.errors`` branch it belongs to."""

from __future__ import annotations

from symbi_common.errors import BadRequest, IntegrityError


class CheckpointInvalid(IntegrityError):
    """A checkpoint note is malformed, names another log, or its signature does not verify."""

    code = "checkpoint_invalid"


class CosignatureInvalid(IntegrityError):
    """A witness cosignature is malformed or does not verify."""

    code = "cosignature_invalid"


class ExportMalformed(BadRequest):
    """An exported log file cannot be read (bad JSON line, missing field, bad base64)."""

    code = "export_malformed"


class WitnessRequestMalformed(BadRequest):
    """An add-checkpoint request body does not follow C2SP tlog-witness."""

    code = "witness_request_malformed"
