"""Bearer-token dependencies: 401 without a valid token, 403 without the scope."""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request

from ingest_api.problems import ProblemError
from shared.auth import InvalidTokenError, Principal, verify_token
from shared.settings import Settings


def require_scope(scope: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    async def dependency(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProblemError(
                401, "Unauthorized", "send Authorization: Bearer <token>", kind="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        settings: Settings = request.app.state.settings
        try:
            principal = verify_token(settings, token.strip())
        except InvalidTokenError as exc:
            raise ProblemError(
                401, "Unauthorized", f"invalid token: {exc}", kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None
        if scope not in principal.scopes:
            raise ProblemError(
                403, "Forbidden", f"the token lacks the {scope!r} scope", kind="forbidden"
            )
        return principal

    return dependency

