"""Authentication and authorization of every HTTP API call, installed once by :func:`symbi_common.service_app.create_app`.

Every request except ``/healthz``, ``/readyz`` and ``/metrics`` (left open for probes and scrapers) must
carry ``Authorization: Bearer <operator token>`` (:mod:`symbi_common.operator_tokens`). The middleware

1. verifies the token against the active operator-token issuers of the key registry version in use (a
   verified token is cached, so its signature is checked once; expiry is checked on every call). The
   registry is the service's own, which its follower keeps current (:mod:`symbi_common.livekeys`): from
   the version that retires or revokes an issuer, its tokens are refused (``details.reason``
   ``issuer_retired`` / ``issuer_revoked``), cached ones too, and a new issuer's are accepted, without a
   restart. The guard also has the registry catch up with the ``REGISTRY`` stream every
   :data:`REGISTRY_CHECK_S` (a lagging follower cannot keep a retired issuer alive), and refuses every call
   (503, ``registry_unconfirmed``) once it could not for :data:`REGISTRY_STALE_S`: it cannot know then
   whether an issuer was retired meanwhile;
2. refuses a token whose id is in the revocation list (every entry of the append-only
   ``OPERATOR_REVOCATIONS`` KV bucket, followed live; entries not signed by an issuer are ignored, and a
   later entry of a key — a delete marker, another value — never un-revokes);
3. (a dependency of every route, :func:`authorize_request`) asks the service's one :class:`~symbi_common.policy.Enforcer` for a Cedar decision on
   ``Operator::"<name>"`` (attribute ``role``) doing ``Action::"api.read" | "api.write" | "api.admin"``
   on ``ApiRoute::"<service> <METHOD> <path template>"``; the decision goes to the decision log.

Missing or bad credentials → 401, a denial → 403, the revocation list not loaded yet or the key registry
not confirmed current → 503, each with
the typed error body of every other Symbi error. A request for a path no route serves is authenticated
and then left to answer 404; the OpenAPI document and ``/docs`` need a token but no decision.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from symbi_common.crypto import Verifier
from symbi_common.decisions import DecisionRequest, EntityRef
from symbi_common.errors import InfrastructureError, PolicyDenied, SymbiError, Unauthenticated, to_wire
from symbi_common.keyring import KeyRegistry
from symbi_common.operator_revocations import Revocations
from symbi_common.operator_tokens import OperatorClaims, check_claims, verify_token
from symbi_common.policy.enforcement import HTTP_API
from symbi_common.registry_document import ACTIVE, REVOKED, RegistryDocument

log = structlog.get_logger(__name__)

#: Paths anyone who can reach the port may call: probes and the Prometheus scrape.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

ACCESS_LEVELS = ("read", "write", "admin")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: POST routes that change nothing (a query travels in the body): ``api.read``.
READ_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/v1/decisions"),
        ("POST", "/v1/decisions:batch"),
        ("POST", "/v1/policy-sets/{set_id}/what-if"),
        ("POST", "/v1/memories/query"),
        ("POST", "/v1/knowledge/search"),
        ("POST", "/v1/rag/query"),
        ("POST", "/v1/audit/reports/custom"),
    }
)
#: Routes that change what every other decision or record rests on: ``api.admin``.
ADMIN_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/v1/policy-sets"),
        ("PUT", "/v1/policy-sets/{set_id}"),
        ("POST", "/v1/policy-sets/{set_id}/retire"),
        ("POST", "/v1/audit/erasures"),
    }
)
#: The Cedar rules of the three roles, as in the baseline policy set (a test keeps the two the same).
OPERATOR_POLICIES = """\
@id("baseline-operators-admin")
permit(
  principal is Operator,
  action in [Action::"api.read", Action::"api.write", Action::"api.admin"],
  resource is ApiRoute
)
when { principal.role == "admin" };

@id("baseline-operators-operate")
permit(principal is Operator, action in [Action::"api.read", Action::"api.write"], resource is ApiRoute)
when { principal.role == "operator" };

@id("baseline-operators-audit")
permit(principal is Operator, action == Action::"api.read", resource is ApiRoute)
when { principal.role == "auditor" };
"""
#: ``openapi_extra`` key with which a route can state its access level itself (``read``/``write``/``admin``).
ACCESS_EXTENSION = "x-symbi-access"
_MAX_CACHED_TOKENS = 10_000
#: How long a starting service waits for the revocation list before it serves (refusing calls) anyway.
REVOCATIONS_STARTUP_TIMEOUT_S = 10.0
#: How often the guard has the key registry catch up with the ``REGISTRY`` stream. The registry's follower
#: applies a new version at once; this finds one that a lagging or stalled follower has not delivered.
REGISTRY_CHECK_S = 10.0
#: The guard refuses every call (503) while the key registry was last confirmed current longer ago than this.
REGISTRY_STALE_S = 30.0
#: Has the service's key registry catch up with the ``REGISTRY`` stream (``LiveKeys.catch_up``); raises
#: :class:`InfrastructureError` if it cannot read the stream.
CatchUp = Callable[[], Awaitable[object]]


def route_access(method: str, path: str, openapi_extra: Mapping[str, Any] | None = None) -> str:
    """The access level (``read``, ``write`` or ``admin``) of a route: stated by the route, listed here,
    else ``read`` for GET/HEAD and ``write`` for everything else."""
    stated = (openapi_extra or {}).get(ACCESS_EXTENSION)
    if stated in ACCESS_LEVELS:
        return str(stated)
    if (method, path) in ADMIN_ROUTES:
        return "admin"
    if method in _READ_METHODS or (method, path) in READ_ROUTES:
        return "read"
    return "write"


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str:
    """The bearer token of the ``Authorization`` header; :class:`Unauthenticated` if there is none."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <operator token>'")
            return token.strip()
    raise Unauthenticated(
        "this API needs an operator token: send 'Authorization: Bearer <token>' "
        "(`symbi up` writes one to <home>/operator.token; `symbi token issue` makes more)"
    )


class OperatorGuard:
    """Authenticates and authorizes the requests of one service's app."""

    def __init__(self, service: str) -> None:
        self.service = service
        #: The active operator-token issuers of the registry version in use (key id → verifier).
        self.issuers: dict[str, Verifier] = {}
        self.revocations = Revocations({})
        self.enforcer: Any = None
        #: The service's key registry, kept current by its follower (set by :meth:`start`).
        self.registry: KeyRegistry | None = None
        self.registry_check_s = REGISTRY_CHECK_S
        self.registry_stale_s = REGISTRY_STALE_S
        self._document: RegistryDocument | None = None
        self._statuses: dict[str, str] = {}
        self._confirmed_at = -math.inf  # time.monotonic() of the last catch-up with the REGISTRY stream
        self._cache: dict[str, OperatorClaims] = {}

    async def start(self, runtime: Any) -> None:
        """Follow the registry's issuers, follow the revocations and open the enforcer; call once the runtime
        is started."""
        from symbi_common.consuming import keep_consuming
        from symbi_common.policy import Enforcer

        self.registry = runtime.registry
        catch_up: CatchUp = runtime.keys.catch_up
        try:
            await self.confirm_registry(catch_up)
        except InfrastructureError as exc:
            log.warning("cannot confirm the key registry is current; API calls are refused until it is", error=str(exc))
        self.follow_registry()
        if not self.issuers:
            log.warning("the key registry lists no active operator-token issuer: every API call will be refused")
        self.enforcer = await Enforcer.for_runtime(runtime)
        runtime.spawn(
            keep_consuming(lambda: self.revocations.follow(runtime.js), runtime.stopping, what="operator revocations"),
            "operator-revocations",
        )
        runtime.spawn(
            keep_consuming(lambda: self._keep_confirming(catch_up), runtime.stopping, what="operator issuers"),
            "operator-issuers",
        )
        runtime.add_health_check("operator_revocations", self.revocations.loaded.is_set)
        try:  # serve only once the revocations are in (until then every call would be refused with 503)
            await asyncio.wait_for(self.revocations.loaded.wait(), timeout=REVOCATIONS_STARTUP_TIMEOUT_S)
        except TimeoutError:
            log.warning("the operator token revocation list is not loaded yet; API calls are refused until it is")

    def follow_registry(self) -> None:
        """Use the issuers of the registry version in use now; a token verified under an earlier version is
        verified again. Costs an identity check while the version is the same."""
        document = self.registry.document if self.registry is not None else None
        if document is None or document is self._document:
            return
        self._document = document
        self._statuses = {i.key_id: i.status for i in document.operator_issuers}
        self.issuers = {i.key_id: Verifier(i.public_key) for i in document.operator_issuers if i.status == ACTIVE}
        # A revocation only takes access away: a retired issuer's still count, a revoked (untrusted) key's do not.
        self.revocations.use_issuers(
            {i.key_id: Verifier(i.public_key) for i in document.operator_issuers if i.status != REVOKED}
        )
        self._cache.clear()

    async def confirm_registry(self, catch_up: CatchUp) -> None:
        """Have the registry catch up with the ``REGISTRY`` stream now: it is then current as of now.
        Raises :class:`InfrastructureError` if the stream cannot be read."""
        await catch_up()
        self._confirmed_at = time.monotonic()
        self.follow_registry()

    async def _keep_confirming(self, catch_up: CatchUp) -> None:
        while True:
            await asyncio.sleep(self.registry_check_s)
            try:
                await self.confirm_registry(catch_up)
            except InfrastructureError as exc:
                log.warning("cannot confirm the key registry is current", error=str(exc))

    def authenticate(self, token: str) -> OperatorClaims:
        """The claims of a valid, unexpired, unrevoked ``token`` of an active issuer; :class:`Unauthenticated`
        otherwise (503 while the revocation list is not loaded or the key registry is not confirmed current).
        A token's signature is verified once per registry version, then cached."""
        self.follow_registry()
        claims = self._cache.get(token)
        if claims is None:
            claims = verify_token(token, self.issuers, statuses=self._statuses)
            if len(self._cache) >= _MAX_CACHED_TOKENS:
                self._cache.clear()
            self._cache[token] = claims
        else:
            check_claims(claims)
        if time.monotonic() - self._confirmed_at > self.registry_stale_s:
            raise InfrastructureError(
                f"the {self.service} service could not confirm its key registry is current for "
                f"{self.registry_stale_s:g} s (the REGISTRY stream does not answer): an operator-token issuer may "
                "have been retired meanwhile, so API calls are refused until it can; retry in a moment",
                reason="registry_unconfirmed",
            )
        if not self.revocations.loaded.is_set():
            raise InfrastructureError("the operator token revocation list is not loaded yet; retry in a moment")
        if claims.tid in self.revocations.revoked:
            raise Unauthenticated(f"the bearer token {claims.tid} was revoked")
        return claims

    async def authorize(self, claims: OperatorClaims, method: str, route: Any, target: str) -> None:
        """A Cedar decision (through the enforcer, so it is logged) on ``claims`` calling ``route``;
        :class:`PolicyDenied` unless it allows without conditions."""
        if self.enforcer is None:
            raise InfrastructureError(f"the {self.service} service is still starting; retry in a moment")
        template = str(route.path)
        access = route_access(method, template, getattr(route, "openapi_extra", None))
        request = api_request(self.service, method, template, access, claims, target)
        # PolicyDenied (403) if denied, after logging it; http.api enforces no condition, so the enforcer also
        # denies an allow that carries one ("unenforceable condition").
        await self.enforcer.enforce(request, HTTP_API)


def api_request(
    service: str, method: str, template: str, access: str, claims: OperatorClaims, target: str
) -> DecisionRequest:
    """The decision an operator's call of a route asks: ``Operator::"<name>"`` (attribute ``role``) doing
    ``api.<access>`` on ``ApiRoute::"<service> <method> <template>"``, with the token id and the path called."""
    return DecisionRequest(
        principal=EntityRef(type="Operator", id=claims.sub, attrs={"role": claims.role}),
        action=f"api.{access}",
        resource=EntityRef(
            type="ApiRoute",
            id=f"{service} {method} {template}",
            attrs={"service": service, "method": method, "path": template},
        ),
        context={"token_id": claims.tid, "target": target},
    )


async def authorize_request(request: Request) -> None:
    """The app-wide FastAPI dependency: every API route (but the open ones) gets a policy decision.

    The middleware has authenticated the caller already; a request that reached a route without an
    authenticated operator (the middleware missing) is refused, never let through.
    """
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if path in OPEN_PATHS:
        return
    claims = claims_of(request)
    guard: OperatorGuard | None = getattr(request.app.state, "operator_guard", None)
    if claims is None or guard is None or route is None:
        raise Unauthenticated("no authenticated operator for this request")
    await guard.authorize(claims, request.method, route, request.url.path)


class OperatorAuth:
    """ASGI middleware: every request but :data:`OPEN_PATHS` must carry a valid operator token (401 otherwise)."""

    def __init__(self, app: Any, guard: OperatorGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)  # lifespan, and the probes
            return
        try:
            claims = self.guard.authenticate(bearer_token(scope.get("headers") or []))
        except SymbiError as err:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": err.message[:120]})
                return
            headers = {"WWW-Authenticate": 'Bearer realm="symbi"'} if isinstance(err, Unauthenticated) else None
            response = JSONResponse({"error": to_wire(err)}, status_code=err.http_status, headers=headers)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["operator"] = claims
        await self.app(scope, receive, send)


def document_security(app: FastAPI) -> None:
    """State the bearer scheme and each operation's access level in ``app``'s OpenAPI document."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        doc = default()  # cached by symbi_common.openapi: the changes below are made to the same document
        schemes = doc.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["operatorToken"] = {"type": "http", "scheme": "bearer", "bearerFormat": "symbi operator token"}
        for path, operations in doc.get("paths", {}).items():
            for method, operation in operations.items():
                if isinstance(operation, dict):
                    operation["security"] = [{"operatorToken": []}]
                    operation[ACCESS_EXTENSION] = route_access(method.upper(), path, operation)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def claims_of(request: Request) -> OperatorClaims | None:
    """The claims of the operator who authenticated the request (:class:`OperatorAuth`), if one did."""
    claims = request.scope.get("state", {}).get("operator")
    return claims if isinstance(claims, OperatorClaims) else None


def operator_of(request: Request) -> str:
    """The name (``sub``) of the operator who authenticated the request; '' if none did."""
    claims = claims_of(request)
    return claims.sub if claims is not None else ""


def acting_for(request: Request, asserted: str | None) -> str | None:
    """The principal a request acts for, when it names one (e.g. ``X-Symbi-Principal``).

    The authenticated operator speaks for itself; only an admin may act for another principal (a user
    or an agent). Anything else is refused: a header is a claim, and a claim needs the authority to make it.
    """
    if not asserted:
        return None
    claims = claims_of(request)
    if claims is None:
        raise Unauthenticated("no authenticated operator for this request")
    if claims.role == "admin" or asserted in (claims.sub, f'User::"{claims.sub}"'):
        return asserted
    raise PolicyDenied(
        f"operator {claims.sub!r} (role {claims.role}) may not act as {asserted!r}: "
        "only an admin acts for another principal",
        action="act_as",
    )
