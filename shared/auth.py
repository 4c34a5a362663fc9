"""Bearer tokens: HS256 JWTs naming the tenant (`tid`), scopes and the tenant's token version
(`ver`), minted by the CLI.

A token carries only the scopes it was minted with. `ver` is the tenant's `token_version` when
the token was minted: revoking a tenant's tokens bumps it, and the API refuses a lower `ver`. A
token without `ver` (minted before versions existed) counts as version 0.
"""

import time
from dataclasses import dataclass
from uuid import UUID

import jwt

from shared.settings import Settings

WRITE_SCOPE = "events:write"
READ_SCOPE = "events:read"
ALL_SCOPES = (WRITE_SCOPE, READ_SCOPE)
_ISSUER = "leadstream"


class InvalidTokenError(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    tenant_id: UUID
    scopes: frozenset[str]
    token_version: int = 0


def mint_token(
    settings: Settings,
    *,
    tenant_id: UUID,
    scopes: tuple[str, ...],
    ttl_seconds: int,
    token_version: int = 0,
) -> str:
    if not 0 < ttl_seconds <= settings.token_max_ttl_seconds:
        raise ValueError(
            f"a token's lifetime must be 1 to {settings.token_max_ttl_seconds} seconds"
            " (LEADSTREAM_TOKEN_MAX_TTL_SECONDS)"
        )
    now = int(time.time())
    claims = {
        "iss": _ISSUER,
        "tid": str(tenant_id),
        "scope": " ".join(scopes),
        "ver": token_version,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithm)


def verify_token_with_expiry(settings: Settings, token: str) -> tuple[Principal, float]:
    """The token's principal and its expiry (Unix time); InvalidTokenError if it is not good."""
    try:
        # Only the configured algorithm: `alg: none` and algorithm swaps are refused.
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[settings.jwt_algorithm],
            issuer=_ISSUER,
            options={"require": ["exp", "iat", "tid", "iss"]},
        )
        tenant_id = UUID(str(claims["tid"]))
        version = claims.get("ver", 0)
        if type(version) is not int or version < 0:
            raise ValueError("the token's version (ver) is not a whole number")
        if float(claims["exp"]) - float(claims["iat"]) > settings.token_max_ttl_seconds:
            raise ValueError("the token's lifetime is over LEADSTREAM_TOKEN_MAX_TTL_SECONDS")
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidTokenError(str(exc)) from None
    scopes = frozenset(str(claims.get("scope", "")).split())
    return (
        Principal(tenant_id=tenant_id, scopes=scopes, token_version=version),
        float(claims["exp"]),
    )
