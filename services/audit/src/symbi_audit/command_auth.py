"""Who sent a NATS command that destroys data: the operator token it carries, never a name in its body.

``cmd.audit.erase`` is the NATS twin of ``POST /v1/audit/erasures``, and is held to the same standard:
the command carries ``Authorization: Bearer <operator token>`` as a message header, and the service's
:class:`~symbi_common.operator_auth.OperatorGuard` — the one that guards its HTTP API — verifies the
token's signature against the registry's operator-token issuers, its expiry and the revocation list, then
asks the enforcer for ``api.admin`` on ``ApiRoute::"audit NATS cmd.audit.erase"`` (with the baseline
rules: an admin only; the decision is logged). The erasure's principal is the token's operator. A body
that names another principal or requester is refused: a claim in a body is not an identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from symbi_common.decisions import EntityRef
from symbi_common.errors import PolicyDenied, Unauthenticated
from symbi_common.operator_auth import ACCESS_EXTENSION, OperatorGuard, bearer_token
from symbi_common.operator_tokens import OperatorClaims

#: The message header a command's operator token travels in (as on HTTP).
AUTHORIZATION_HEADER = "Authorization"


@dataclass(frozen=True, slots=True)
class CommandRoute:
    """A NATS command as the guard's :meth:`~OperatorGuard.authorize` sees a route: its subject and access level."""

    path: str
    openapi_extra: dict[str, Any] = field(default_factory=dict)


async def command_operator(
    guard: OperatorGuard | None, headers: Mapping[str, str], subject: str, *, access: str = "admin"
) -> OperatorClaims:
    """The operator who sent the command ``subject`` with ``headers``, authenticated and allowed ``api.<access>``.

    Raises :class:`Unauthenticated` (no, malformed, forged, expired or revoked token) or
    :class:`PolicyDenied` (the enforcer denies the operator's role).
    """
    if guard is None:
        raise Unauthenticated(f"{subject} cannot authenticate its sender: no operator guard in this service")
    raw = headers.get(AUTHORIZATION_HEADER) or headers.get(AUTHORIZATION_HEADER.lower())
    if raw is None:
        raise Unauthenticated(
            f"{subject} needs an operator token: send the header 'Authorization: Bearer <token>' with the command "
            "(`symbi token issue --role admin` makes one)"
        )
    claims = guard.authenticate(bearer_token([(b"authorization", raw.encode("latin-1"))]))
    await guard.authorize(claims, "NATS", CommandRoute(subject, {ACCESS_EXTENSION: access}), subject)
    return claims


def own_principal(claims: OperatorClaims, *named: str) -> EntityRef:
    """``User::"<operator>"``; any principal or requester the body names must be that operator."""
    mine = (claims.sub, f'User::"{claims.sub}"')
    for name in named:
        if name and name not in mine:
            raise PolicyDenied(
                f"operator {claims.sub!r} may not act as {name!r} on a command: the principal is the one the "
                "operator token names",
                action="act_as",
            )
    return EntityRef(type="User", id=claims.sub)
