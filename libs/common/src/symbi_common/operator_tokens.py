"""Operator tokens: compact Ed25519-signed bearer tokens for the services' HTTP APIs, and their revocations.

A token is ``base64url(claims JSON) "." base64url(signature)`` (no padding). The signature is made by
the *operator-token issuer* key over a fixed context string followed by the encoded claims, so it
cannot be confused with any other Symbi signature. The issuer's private key lives with the root key
in the operator-only directory (``<home>/operator/operator-issuer.key``, mode 0600) and is used only
by ``symbi up`` / ``symbi token``; services know only its public key, which the root-signed key
registry lists (:attr:`symbi_common.keyring.RegistryDocument.operator_issuers`).

A revocation is a :class:`Revocation` signed by the same issuer key, stored in the append-only
``OPERATOR_REVOCATIONS`` KV bucket; services read every entry (see :mod:`symbi_common.operator_auth`)
and refuse the token from then on. An issuer the registry retires or revokes issues nothing the
services accept from that registry version on (:func:`issuer_refused`).

Nothing here does I/O except the two key-file helpers at the end.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import msgspec

from symbi_common.crypto import Signer, Verifier
from symbi_common.errors import KeyringError, Unauthenticated, ValidationError
from symbi_common.key_material import load_signer, write_key_file

#: The roles an operator token can carry: admin (everything), operator (read and change), auditor (read only).
ROLES: tuple[str, ...] = ("admin", "operator", "auditor")
#: The issuer key's file in the operator-only directory.
ISSUER_KEY_FILE = "operator-issuer.key"
#: Clock skew tolerated between the issuing machine and a service (a token issued "in the future").
MAX_CLOCK_SKEW_S = 60
#: Longest lifetime a token may be issued for (one year).
MAX_TTL_S = 366 * 86_400
#: Longest token accepted at all (claims are small; this bounds decoding work on garbage).
MAX_TOKEN_CHARS = 2_048

_TOKEN_CONTEXT = b"symbi-operator-token-v1\x00"
_REVOCATION_CONTEXT = b"symbi-operator-revocation-v1\x00"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")


class OperatorClaims(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a token says: who (``sub``) with which ``role``, valid from ``iat`` until ``exp`` (Unix seconds)."""

    tid: str  #: token id (revocations name it)
    sub: str  #: operator name
    role: str
    iat: int
    exp: int
    kid: str  #: id of the issuer key that signed it


class Revocation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``tid`` is revoked since ``revoked_at``; signed by issuer ``kid`` (``sig`` over the other fields)."""

    tid: str
    revoked_at: int
    kid: str
    reason: str = ""
    sig: bytes = b""


_claims_decoder = msgspec.json.Decoder(OperatorClaims)
_revocation_decoder = msgspec.json.Decoder(Revocation)
_encoder = msgspec.json.Encoder()


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValidationError(f"unknown role {role!r}; one of {', '.join(ROLES)}", field="role")
    return role


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValidationError(
            "an operator name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit",
            field="name",
        )
    return name


def issue_token(
    issuer: Signer, *, name: str, role: str, ttl_s: int, now: int | None = None
) -> tuple[str, OperatorClaims]:
    """A new token for operator ``name`` with ``role``, valid for ``ttl_s`` seconds; and its claims."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValidationError(f"ttl must be between 1 s and {MAX_TTL_S} s", field="ttl")
    issued = int(time.time()) if now is None else now
    claims = OperatorClaims(
        tid=uuid.uuid4().hex,
        sub=check_name(name),
        role=check_role(role),
        iat=issued,
        exp=issued + ttl_s,
        kid=issuer.key_id,
    )
    body = _b64e(_encoder.encode(claims))
    signature = issuer.sign(_TOKEN_CONTEXT + body.encode("ascii"))
    return f"{body}.{_b64e(signature)}", claims


def verify_token(
    token: str,
    issuers: Mapping[str, Verifier],
    *,
    now: float | None = None,
    statuses: Mapping[str, str] | None = None,
) -> OperatorClaims:
    """The claims of ``token`` if an issuer in ``issuers`` (key id → verifier) signed it and it is current.

    Raises :class:`Unauthenticated` (never anything else) for a malformed, unsigned, foreign, not yet
    valid or expired token; one from a key not in ``issuers`` says why (:func:`issuer_refused`, with the
    key's registry status from ``statuses``). Revocation is the caller's check.
    """
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise Unauthenticated("the bearer token is malformed")
    body, _, sig = token.partition(".")
    try:
        claims = _claims_decoder.decode(_b64d(body))
        signature = _b64d(sig)
    except (msgspec.DecodeError, binascii.Error, ValueError):
        raise Unauthenticated("the bearer token is malformed") from None
    verifier = issuers.get(claims.kid)
    if verifier is None:
        raise issuer_refused(claims.kid, (statuses or {}).get(claims.kid))
    if not verifier.verify(_TOKEN_CONTEXT + body.encode("ascii"), signature):
        raise Unauthenticated("the bearer token's signature is invalid")
    check_claims(claims, now=now)
    return claims


def issuer_refused(key_id: str, status: str | None) -> Unauthenticated:
    """The refusal of a token signed by ``key_id``, which is no active issuer: ``status`` is its status in the key
    registry (``retired``, ``revoked``), ``None`` if the registry does not list it. ``details["reason"]`` is
    ``issuer_retired``, ``issuer_revoked`` or ``unknown_issuer``."""
    if status is None:
        return Unauthenticated(
            f"the bearer token was issued by key {key_id}, which is not an operator issuer", reason="unknown_issuer"
        )
    return Unauthenticated(
        f"the bearer token was issued by key {key_id}, an operator issuer the key registry lists as {status}: "
        "its tokens are refused; use a token of a current issuer (`symbi token issue`)",
        reason=f"issuer_{status}",
    )


def check_claims(claims: OperatorClaims, *, now: float | None = None) -> None:
    """:class:`Unauthenticated` unless ``claims`` are valid at ``now`` (role known, not expired, not from the future)."""
    t = time.time() if now is None else now
    if claims.role not in ROLES:
        raise Unauthenticated(f"the bearer token has unknown role {claims.role!r}")
    if claims.iat > t + MAX_CLOCK_SKEW_S:
        raise Unauthenticated("the bearer token is not valid yet (issued in the future)")
    if claims.exp <= t:
        raise Unauthenticated(f"the bearer token {claims.tid} expired; issue a new one with `symbi token issue`")


def _revocation_message(r: Revocation) -> bytes:
    return _REVOCATION_CONTEXT + _encoder.encode(msgspec.structs.replace(r, sig=b""))


def sign_revocation(issuer: Signer, token_id: str, *, reason: str = "", now: int | None = None) -> Revocation:
    """A revocation of token ``token_id`` signed by ``issuer``."""
    unsigned = Revocation(
        tid=token_id, revoked_at=int(time.time()) if now is None else now, kid=issuer.key_id, reason=reason[:200]
    )
    return msgspec.structs.replace(unsigned, sig=issuer.sign(_revocation_message(unsigned)))


def encode_revocation(r: Revocation) -> bytes:
    return _encoder.encode(r)


def decode_revocation(data: bytes) -> Revocation | None:
    """The revocation ``data`` holds, not verified; ``None`` if it holds none."""
    try:
        return _revocation_decoder.decode(data)
    except msgspec.DecodeError:
        return None


def signed_by_issuer(r: Revocation, issuers: Mapping[str, Verifier]) -> bool:
    """Whether issuer ``r.kid`` of ``issuers`` signed ``r``."""
    verifier = issuers.get(r.kid)
    return verifier is not None and verifier.verify(_revocation_message(r), r.sig)


def verify_revocation(data: bytes, issuers: Mapping[str, Verifier]) -> Revocation | None:
    """The revocation in ``data`` if an issuer signed it; ``None`` for anything else (a forged entry is ignored)."""
    r = decode_revocation(data)
    return r if r is not None and signed_by_issuer(r, issuers) else None


# --- the issuer key file (operator-only directory) ------------------------------------------------


def default_operator_dir(keys_dir: Path) -> Path:
    """The operator-only directory next to the keyring: ``<keys_dir>/../operator``."""
    return keys_dir.parent / "operator"


def ensure_issuer_key(operator_dir: Path) -> tuple[Signer, bool]:
    """The operator-token issuer key in ``operator_dir`` (0700), created (0600) if missing; and whether it was."""
    path = operator_dir / ISSUER_KEY_FILE
    operator_dir.mkdir(parents=True, exist_ok=True)
    operator_dir.chmod(0o700)
    if path.exists():
        return load_issuer_key(operator_dir), False
    write_key_file(path, Signer.generate().seed(), private=True)
    return load_issuer_key(operator_dir), True


def load_issuer_key(operator_dir: Path) -> Signer:
    path = operator_dir / ISSUER_KEY_FILE
    if not path.exists():
        raise KeyringError(f"no operator-token issuer key at {path}; create it with `symbi keys init`")
    return load_signer(path)


def bearer_header(token: str) -> dict[str, str]:
    """The HTTP header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


def issue_local_token(keys_dir: Path, *, name: str = "local-admin", role: str = "admin", ttl_s: int = 86_400) -> str:
    """A token from the issuer key next to ``keys_dir`` (``symbi up``'s local credential, tests, benchmarks)."""
    token, _ = issue_token(load_issuer_key(default_operator_dir(keys_dir)), name=name, role=role, ttl_s=ttl_s)
    return token
