"""The API's token cache: bounded, and full of live tokens it forgets only the stalest one."""

import uuid

import pytest

from ingest_api import auth
from ingest_api.auth import TokenVerifier
from shared.auth import WRITE_SCOPE, Principal, mint_token
from shared.settings import Settings

SETTINGS = Settings(jwt_secret="a-test-secret-of-at-least-32-bytes!!")


def test_a_full_cache_forgets_the_least_recently_used_token_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verified: list[str] = []
    real = auth.verify_token_with_expiry

    def counting(settings: Settings, token: str) -> tuple[Principal, float]:
        verified.append(token)
        return real(settings, token)

    monkeypatch.setattr(auth, "verify_token_with_expiry", counting)
    verifier = TokenVerifier(SETTINGS, max_tokens=3)
    t1, t2, t3, t4 = (
        mint_token(SETTINGS, tenant_id=uuid.uuid4(), scopes=(WRITE_SCOPE,), ttl_seconds=60)
        for _ in range(4)
    )
    for token in (t1, t2, t3, t1, t4):  # t1 used again: t2 is now the stalest
        verifier.verify(token)
    assert verified == [t1, t2, t3, t4]
    for token in (t1, t3, t4):  # still known: no verification
        verifier.verify(token)
    assert verified == [t1, t2, t3, t4]
    verifier.verify(t2)  # forgotten: verified again
    assert verified == [t1, t2, t3, t4, t2]
