"""Bearer-token dependencies: 401 without a valid token, 403 without the scope."""

import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from ingest_api.problems import ProblemError
from shared.auth import READ_SCOPE, InvalidTokenError, Principal, verify_token_with_expiry
from shared.settings import Settings


def require_scope(scope: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    async def dependency(request: Request) -> Principal:
        return authorize(
            request.headers.get("authorization"), request.app.state.ingest.token_verifier, scope
        )

    return dependency


def authorize(header: str | None, verifier: "TokenVerifier", scope: str) -> Principal:
    """The Authorization header's principal; ProblemError 401 without a good token, 403 without
    the scope."""
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


ReaderDep = Annotated[Principal, Depends(require_scope(READ_SCOPE))]
