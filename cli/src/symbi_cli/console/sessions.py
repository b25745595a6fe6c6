"""Who is logged in: the operator's token, verified here against the root-signed key registry.

The role comes from the token's claims (signed by an operator issuer the registry names); the services check
the token again (and its revocation) on every call. The browser holds only a random session id (an HttpOnly,
SameSite=Strict cookie); the session itself — the token and the CSRF token every form post must carry — is
sealed on disk (:mod:`symbi_cli.console.session_store`), so restarting the console logs nobody out.

On every request the sealed session is opened and its token verified again (signature by a current operator
issuer, expiry); anything that does not open or verify ends the session (fail closed: the login page).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgspec
from symbi_common.errors import SymbiError, Unauthenticated
from symbi_common.keyring import KeyRegistry
from symbi_common.operator_tokens import OperatorClaims, verify_token

from symbi_cli.console.session_store import SessionStore

COOKIE = "symbi_console"
#: Roles that may press buttons that change state; the auditor only reads.
WRITERS = frozenset({"admin", "operator"})
#: A session id as :func:`secrets.token_urlsafe` (32 bytes) makes it; anything else is not looked up.
_SID_RE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")


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


class _Sealed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What is sealed on disk for one session."""

    token: str
    csrf: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Sealed).decode


class Sessions:
    """Log in (verify a token, seal a new session), look a session up (open and verify again), log out."""

    def __init__(self, keys_dir: Path, state_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.store = SessionStore(state_dir)
        self.store.sweep(self._current)
        #: How many sessions have ended here (logged out, or found over): a live stream that sees it change
        #: checks its own session at once rather than at its next periodic check.
        self.ended = 0

    def _verify(self, token: str) -> OperatorClaims:
        try:
            issuers = KeyRegistry.load(self.keys_dir).operator_issuers()
        except (OSError, SymbiError) as exc:
            raise LoginRefused(f"cannot load the key registry from {self.keys_dir}: {exc}") from exc
        try:
            return verify_token(token, issuers)
        except Unauthenticated as exc:
            raise LoginRefused(str(exc)) from None

    def _current(self, sealed: bytes) -> bool:
        try:
            self._verify(_decode(sealed).token)
        except (LoginRefused, msgspec.DecodeError):
            return False
        return True

    def login(self, token: str) -> tuple[str, Session]:
        """A new session for ``token`` if an active operator issuer of the registry signed it and it is current."""
        token = token.strip()
        if not token:
            raise LoginRefused("paste an operator token (`symbi token issue`, or the one `symbi up` wrote)")
        claims = self._verify(token)
        sid = secrets.token_urlsafe(32)
        session = Session(token=token, claims=claims, csrf=secrets.token_urlsafe(24))
        self.store.put(sid, _encode(_Sealed(token=token, csrf=session.csrf)))
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The session of ``sid`` if it opens under this console's key and its token is still current."""
        if not sid or not _SID_RE.match(sid):
            return None
        sealed = self.store.get(sid)
        if sealed is None:
            return None
        try:
            record = _decode(sealed)
            claims = self._verify(record.token)
        except (msgspec.DecodeError, LoginRefused):
            self.store.delete(sid)  # expired, or its issuer is no longer one: the session is over
            self.ended += 1
            return None
        return Session(token=record.token, claims=claims, csrf=record.csrf)

    def logout(self, sid: str | None) -> None:
        if sid and _SID_RE.match(sid):
            self.store.delete(sid)
            self.ended += 1


def require_change(session: Session, csrf: str) -> None:
    """Refuse a state-changing post from a read-only role or without the session's CSRF token."""
    if not session.can_change:
        raise Forbidden(f"role {session.claims.role!r} is read-only in the console; it may not change state")
    # As bytes: compare_digest raises TypeError on a str that is not ASCII (a form may post any text).
    if not secrets.compare_digest(csrf.encode(), session.csrf.encode()):
        raise Forbidden("the form's CSRF token does not match this session; reload the page")
