"""Who is logged in: the operator's token, verified here against the root-signed key registry.

The role comes from the token's claims (signed by an operator issuer the registry names); the services check
the token again (and its revocation) on every call. A session lives in this process only (a random id in an
HttpOnly, SameSite=Strict cookie) together with a CSRF token every form post must carry.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from symbi_common.errors import SymbiError, Unauthenticated
from symbi_common.keyring import KeyRegistry
from symbi_common.operator_tokens import OperatorClaims, verify_token

COOKIE = "symbi_console"
#: Roles that may press buttons that change state; the auditor only reads.
WRITERS = frozenset({"admin", "operator"})


class LoginRefused(SymbiError):
    """The pasted token is not a current operator token of this runtime."""

    code = "login_refused"


class Forbidden(SymbiError):
    """The operator's role may not do this (the auditor changing state, a post without its CSRF token)."""

    code = "forbidden"


@dataclass(frozen=True)
class Session:
    token: str
    claims: OperatorClaims
    csrf: str

    @property
    def can_change(self) -> bool:
        return self.claims.role in WRITERS


@dataclass
class Sessions:
    keys_dir: Path
    _by_id: dict[str, Session] = field(default_factory=dict)

    def login(self, token: str) -> tuple[str, Session]:
        """A new session for ``token`` if an active operator issuer of the registry signed it and it is current."""
        token = token.strip()
        if not token:
            raise LoginRefused("paste an operator token (`symbi token issue`, or the one `symbi up` wrote)")
        try:
            issuers = KeyRegistry.load(self.keys_dir).operator_issuers()
        except (OSError, SymbiError) as exc:
            raise LoginRefused(f"cannot load the key registry from {self.keys_dir}: {exc}") from exc
        try:
            claims = verify_token(token, issuers)
        except Unauthenticated as exc:
            raise LoginRefused(str(exc)) from None
        sid = secrets.token_urlsafe(32)
        session = Session(token=token, claims=claims, csrf=secrets.token_urlsafe(24))
        self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        session = self._by_id.get(sid or "")
        if session is not None and session.claims.exp <= time.time():
            self._by_id.pop(sid or "", None)
            return None
        return session

    def logout(self, sid: str | None) -> None:
        self._by_id.pop(sid or "", None)


def require_change(session: Session, csrf: str) -> None:
    """Refuse a state-changing post from a read-only role or without the session's CSRF token."""
    if not session.can_change:
        raise Forbidden(f"role {session.claims.role!r} is read-only in the console; it may not change state")
    if not secrets.compare_digest(csrf, session.csrf):
        raise Forbidden("the form's CSRF token does not match this session; reload the page")
