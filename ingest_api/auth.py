"""Bearer-token checks: 401 without a good token (bad, expired, revoked, or its tenant unknown
or disabled), 403 without the scope."""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any
from uuid import UUID

import structlog
from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError

from ingest_api.problems import ProblemError
from shared.auth import READ_SCOPE, InvalidTokenError, Principal, verify_token_with_expiry
from shared.db.tenants import TenantStatus
from shared.settings import Settings

log = structlog.get_logger(__name__)

# While PostgreSQL cannot answer, a tenant's last known status is asked for again this often.
_STALE_RETRY_SECONDS = 5.0


def require_scope(scope: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    async def dependency(request: Request) -> Principal:
        state = request.app.state.ingest
        principal = authenticate(request.headers.get("authorization"), state.token_verifier)
        return await admit(principal, state.tenants, scope)

    return dependency


def authenticate(header: str | None, verifier: "TokenVerifier") -> Principal:
    """The Authorization header's principal, if its token is well signed and current;
    ProblemError 401 otherwise. `admit` decides what it may do."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            "Unauthorized",
            "send Authorization: Bearer <token>",
            kind="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        principal = verifier.verify(token.strip())
    except InvalidTokenError as exc:
        raise ProblemError(
            401,
            "Unauthorized",
            f"invalid token: {exc}",
            kind="unauthorized",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None
    return principal


async def admit(principal: Principal, tenants: "TenantGate", scope: str) -> Principal:
    """The principal, if its tenant still accepts its token (401 otherwise) and the token has
    the scope (403 otherwise)."""
    await tenants.check(principal)
    if scope not in principal.scopes:
        raise ProblemError(
            403, "Forbidden", f"the token lacks the {scope!r} scope", kind="forbidden"
        )
    return principal


class TokenVerifier:
    """Verifies Bearer tokens, remembering good ones until they expire.

    Checking a JWT's signature costs ~80 µs, more than the rest of an ingest request; a client
    sends the same token thousands of times, so each is verified once and its expiry on each use.
    """

    def __init__(self, settings: Settings, *, max_tokens: int = 10_000) -> None:
        self._settings, self._max = settings, max_tokens
        # Least recently used first: past `max_tokens`, only the stalest one is forgotten, so
        # more live tokens than that cost one verify per miss, not a cleared cache for all.
        self._known: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def verify(self, token: str) -> Principal:
        known = self._known.get(token)
        if known is not None:
            principal, expires = known
            if time.time() < expires:
                self._known.move_to_end(token)
                return principal
            del self._known[token]
        principal, expires = verify_token_with_expiry(self._settings, token)
        self._known[token] = (principal, expires)
        if len(self._known) > self._max:
            self._known.popitem(last=False)
        return principal


class TenantGate:
    """Refuses a token whose tenant does not exist, is disabled, or has revoked it.

    A tenant's status is remembered per process for `ttl` seconds, so the hot path reads a dict,
    not PostgreSQL: a disable or a revocation takes effect within that time. Concurrent requests
    of a tenant not known yet share one query. While PostgreSQL cannot answer, the last known
    status stands (an outage of the database must not stop the intake), and a tenant this
    process has never seen is answered 503.
    """

    def __init__(
        self,
        read: Callable[[UUID], Awaitable[TenantStatus | None]],
        *,
        ttl: float,
        timeout: float,
        max_tenants: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self._ttl, self._timeout, self._max = read, ttl, timeout, max_tenants
        self._clock = clock
        self._known: dict[UUID, tuple[TenantStatus | None, float]] = {}
        self._reading: dict[UUID, asyncio.Future[TenantStatus | None]] = {}

    async def check(self, principal: Principal) -> None:
        """ProblemError 401 if the principal's tenant refuses its tokens, 503 if unknowable."""
        known = self._known.get(principal.tenant_id)
        if known is not None and self._clock() < known[1]:
            status = known[0]
        else:
            status = await self._status(principal.tenant_id)
        if status is None:
            raise _refused("its tenant does not exist")
        if not status.active:
            raise _refused("its tenant is disabled")
        # Versions only grow: a higher `ver` than remembered was minted after that read.
        if principal.token_version < status.token_version:
            raise _refused("it was revoked")

    async def _status(self, tenant_id: UUID) -> TenantStatus | None:
        reading = self._reading.get(tenant_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read_and_remember(tenant_id))
            self._reading[tenant_id] = reading
            reading.add_done_callback(lambda _: self._reading.pop(tenant_id, None))
        # Shielded: a caller that goes away does not cancel the read others wait for.
        return await asyncio.shield(reading)

    async def _read_and_remember(self, tenant_id: UUID) -> TenantStatus | None:
        try:
            async with asyncio.timeout(self._timeout):
                status = await self._read(tenant_id)
            expires = self._clock() + self._ttl
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            known = self._known.get(tenant_id)
            log.warning("tenant_status.unavailable", tenant_id=str(tenant_id), error=repr(exc))
            if known is None:
                raise ProblemError(
                    503,
                    "Unavailable",
                    "the token's tenant cannot be checked now: retry after Retry-After seconds",
                    kind="unavailable",
                    headers={"Retry-After": "1"},
                ) from None
            status = known[0]
            expires = self._clock() + min(self._ttl, _STALE_RETRY_SECONDS)
        if len(self._known) >= self._max and tenant_id not in self._known:
            self._known.clear()  # bounded; only tokens with a good signature get this far
        self._known[tenant_id] = (status, expires)
        return status


def _refused(why: str) -> ProblemError:
    return ProblemError(
        401,
        "Unauthorized",
        f"invalid token: {why}",
        kind="unauthorized",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


ReaderDep = Annotated[Principal, Depends(require_scope(READ_SCOPE))]
