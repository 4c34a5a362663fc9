"""Tokens: lifetimes are capped when minted and when verified; scopes and version carried."""

import time
import uuid

import jwt
import pytest

from shared.auth import (
    ALL_SCOPES,
    WRITE_SCOPE,
    InvalidTokenError,
    mint_token,
    verify_token_with_expiry,
)
from shared.settings import Settings

SETTINGS = Settings(jwt_secret="s" * 32, token_max_ttl_seconds=3600)
TENANT = uuid.uuid4()


@pytest.mark.parametrize("ttl", [0, -5, 3601])
def test_a_lifetime_outside_the_cap_is_not_minted(ttl: int) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        mint_token(SETTINGS, tenant_id=TENANT, scopes=ALL_SCOPES, ttl_seconds=ttl)


def test_a_token_within_the_cap_verifies() -> None:
    token = mint_token(SETTINGS, tenant_id=TENANT, scopes=ALL_SCOPES, ttl_seconds=3600)
    principal, _ = verify_token_with_expiry(SETTINGS, token)
    assert principal.tenant_id == TENANT


def test_a_token_signed_for_longer_than_the_cap_is_refused() -> None:
    now = int(time.time())
    claims = {"iss": "leadstream", "tid": str(TENANT), "iat": now, "exp": now + 10 * 365 * 86400}
    forged_long = jwt.encode(claims, SETTINGS.jwt_secret, algorithm="HS256")
    with pytest.raises(InvalidTokenError, match="lifetime"):
        verify_token_with_expiry(SETTINGS, forged_long)


def test_a_token_carries_its_scopes_and_the_tenants_token_version() -> None:
    token = mint_token(
        SETTINGS, tenant_id=TENANT, scopes=(WRITE_SCOPE,), ttl_seconds=60, token_version=3
    )
    principal, _ = verify_token_with_expiry(SETTINGS, token)
    assert (principal.scopes, principal.token_version) == (frozenset({WRITE_SCOPE}), 3)


def test_a_token_without_a_version_is_version_0_and_a_bad_version_is_refused() -> None:
    now = int(time.time())
    claims = {"iss": "leadstream", "tid": str(TENANT), "iat": now, "exp": now + 60}
    unversioned = jwt.encode(claims, SETTINGS.jwt_secret, algorithm="HS256")
    assert verify_token_with_expiry(SETTINGS, unversioned)[0].token_version == 0
    for bad in (-1, "2", 1.5, True):
        versioned = jwt.encode({**claims, "ver": bad}, SETTINGS.jwt_secret, algorithm="HS256")
        with pytest.raises(InvalidTokenError, match="ver"):
            verify_token_with_expiry(SETTINGS, versioned)
