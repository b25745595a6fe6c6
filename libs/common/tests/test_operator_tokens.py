"""Operator tokens and revocations: signed by the issuer, refused when tampered with, foreign, expired or odd."""

from __future__ import annotations

import base64
import time

import msgspec
import pytest
from symbi_common.crypto import Signer, Verifier
from symbi_common.errors import Unauthenticated, ValidationError
from symbi_common.operator_auth import bearer_token, route_access
from symbi_common.operator_revocations import Revocations
from symbi_common.operator_tokens import (
    MAX_CLOCK_SKEW_S,
    encode_revocation,
    issue_token,
    sign_revocation,
    verify_revocation,
    verify_token,
)

ISSUER = Signer.generate()


def issuers() -> dict[str, Verifier]:
    return {ISSUER.key_id: Verifier(ISSUER.public_key)}


def test_a_token_round_trips() -> None:
    token, claims = issue_token(ISSUER, name="ann", role="auditor", ttl_s=60)
    assert verify_token(token, issuers()) == claims
    assert (claims.sub, claims.role, claims.kid) == ("ann", "auditor", ISSUER.key_id)
    assert claims.exp - claims.iat == 60


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_tampered_claims_do_not_verify() -> None:
    token, claims = issue_token(ISSUER, name="ann", role="auditor", ttl_s=60)
    forged = msgspec.json.encode(msgspec.structs.replace(claims, role="admin"))
    with pytest.raises(Unauthenticated, match="signature"):
        verify_token(_b64(forged) + "." + token.split(".")[1], issuers())


@pytest.mark.parametrize("text", ["", "a", "a.b.c", "!!.??", "e30.e30", "x" * 5000])
def test_garbage_is_unauthenticated_never_a_crash(text: str) -> None:
    with pytest.raises(Unauthenticated):
        verify_token(text, issuers())


def test_foreign_expired_and_future_tokens_are_refused() -> None:
    foreign, _ = issue_token(Signer.generate(), name="ann", role="admin", ttl_s=60)
    with pytest.raises(Unauthenticated, match="not an operator issuer"):
        verify_token(foreign, issuers())
    expired, _ = issue_token(ISSUER, name="ann", role="admin", ttl_s=60, now=int(time.time()) - 61)
    with pytest.raises(Unauthenticated, match="expired"):
        verify_token(expired, issuers())
    future, _ = issue_token(ISSUER, name="ann", role="admin", ttl_s=60, now=int(time.time()) + MAX_CLOCK_SKEW_S + 30)
    with pytest.raises(Unauthenticated, match="not valid yet"):
        verify_token(future, issuers())


def test_issue_refuses_bad_roles_names_and_lifetimes() -> None:
    for kwargs in ({"role": "root"}, {"name": "-x"}, {"name": "a b"}, {"ttl_s": 0}, {"ttl_s": 10**9}):
        args = {"name": "ann", "role": "admin", "ttl_s": 60, **kwargs}
        with pytest.raises(ValidationError):
            issue_token(ISSUER, **args)  # type: ignore[arg-type]


def test_only_issuer_signed_revocations_count() -> None:
    _, claims = issue_token(ISSUER, name="ann", role="admin", ttl_s=60)
    revocations = Revocations(issuers())
    revocations.apply(claims.tid, encode_revocation(sign_revocation(Signer.generate(), claims.tid)))
    revocations.apply(claims.tid, b"not json")
    other = sign_revocation(ISSUER, "0" * 32)
    revocations.apply(claims.tid, encode_revocation(other))  # signed, but for another token id
    assert revocations.revoked == set()
    assert revocations.ignored == 3
    revocations.apply(claims.tid, encode_revocation(sign_revocation(ISSUER, claims.tid, reason="left")))
    revocations.apply(claims.tid, None)  # a deletion does not un-revoke
    assert revocations.revoked == {claims.tid}
    assert verify_revocation(encode_revocation(sign_revocation(ISSUER, "t")), issuers()) is not None


def test_bearer_header_parsing() -> None:
    assert bearer_token([(b"authorization", b"Bearer abc")]) == "abc"
    assert bearer_token([(b"authorization", b"bearer   abc ")]) == "abc"
    for value in (b"Basic abc", b"Bearer", b"Bearer  ", b"abc"):
        with pytest.raises(Unauthenticated):
            bearer_token([(b"authorization", value)])
    with pytest.raises(Unauthenticated, match="operator token"):
        bearer_token([])


def test_route_access_levels() -> None:
    assert route_access("GET", "/v1/agents") == "read"
    assert route_access("POST", "/v1/agents") == "write"
    assert route_access("POST", "/v1/memories/query") == "read"
    assert route_access("POST", "/v1/policy-sets") == "admin"
    assert route_access("DELETE", "/v1/anything") == "write"
    assert route_access("GET", "/v1/x", {"x-symbi-access": "admin"}) == "admin"
    assert route_access("POST", "/v1/x", {"x-symbi-access": "bogus"}) == "write"
