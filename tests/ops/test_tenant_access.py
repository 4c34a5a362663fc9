"""The operator's levers on tokens, end to end: `leadstream token` scopes, `token revoke`,
`tenant disable` / `enable`, against a real API process, PostgreSQL, Redis and worker."""

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.auth import READ_SCOPE, WRITE_SCOPE, mint_token, verify_token_with_expiry
from shared.db.tables import tenants_t
from shared.settings import Settings
from tests.support.messages import envelope, message, push, wait_outcomes
from tests.support.processes import BIN, REPO, WorkerProcess, start_api, stop
from tests.support.tenants import Tenant

EVENTS = "/api/partner/events"
PAGE_VIEW = {"type": "page_view", "visitorId": "v-1", "pageUrl": "https://example.com/"}
CACHE_SECONDS = 1
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def api(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API that re-reads a tenant's status every second, so changes show quickly."""
    env = {**service_env, "LEADSTREAM_TENANT_CACHE_SECONDS": str(CACHE_SECONDS)}
    started = start_api(env, tmp_path_factory.mktemp("api") / "api.log")
    yield started.url
    stop(started.process)


@pytest.fixture
def leadstream(service_env: dict[str, str]) -> Cli:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "leadstream"), *args],
            env=service_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def _mint(leadstream: Cli, *args: str) -> str:
    minted = leadstream("token", *args)
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip()


def _post(api: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{api}{EVENTS}", json=PAGE_VIEW, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def _eventually(api: str, token: str, status: int, timeout: float = 20) -> httpx.Response:
    """POST until the API answers `status` (a change reaches it within its cache period)."""
    deadline = time.monotonic() + timeout
    while (response := _post(api, token)).status_code != status:
        assert time.monotonic() < deadline, (status, response.status_code, response.text)
        time.sleep(0.2)
    return response


def test_a_token_carries_the_scopes_asked_for_write_only_by_default(
    api: str, tenant: Tenant, settings: Settings, leadstream: Cli
) -> None:
    default = _mint(leadstream, "--tenant", tenant.name)
    both = _mint(leadstream, "--tenant", tenant.name, "--scope", WRITE_SCOPE, "--scope", READ_SCOPE)
    assert verify_token_with_expiry(settings, default)[0].scopes == {WRITE_SCOPE}
    assert verify_token_with_expiry(settings, both)[0].scopes == {WRITE_SCOPE, READ_SCOPE}

    created = _post(api, default)
    assert created.status_code == 202, created.text
    location = f"{api}{created.headers['location']}"
    refused = httpx.get(location, headers={"Authorization": f"Bearer {default}"}, timeout=10)
    assert refused.status_code == 403, refused.text
    read = httpx.get(location, headers={"Authorization": f"Bearer {both}"}, timeout=10)
    assert read.status_code in {200, 201, 202}, read.text


def test_revoking_refuses_every_earlier_token_and_none_minted_after(
    api: str, tenant: Tenant, leadstream: Cli
) -> None:
    earlier = _mint(leadstream, "--tenant", tenant.name)
    assert _post(api, earlier).status_code == 202
    assert _post(api, tenant.token).status_code == 202

    revoked = leadstream("token", "revoke", "--tenant", tenant.name)
    assert revoked.returncode == 0, revoked.stderr
    later = _mint(leadstream, "--tenant", tenant.name)
    # At once, though this API still remembers the tenant's old version: versions only grow.
    assert _post(api, later).status_code == 202

    refused = _eventually(api, earlier, 401)
    assert refused.json()["detail"] == "invalid token: it was revoked"
    assert _post(api, tenant.token).status_code == 401
    assert _post(api, later).status_code == 202


def test_a_disabled_tenants_tokens_are_refused_until_it_is_enabled(
    api: str, tenant: Tenant, leadstream: Cli
) -> None:
    assert _post(api, tenant.token).status_code == 202
    disabled = leadstream("tenant", "disable", tenant.name)
    assert disabled.returncode == 0, disabled.stderr
    assert "LEADSTREAM_TENANT_CACHE_SECONDS" in disabled.stdout

    refused = _eventually(api, tenant.token, 401)
    assert refused.json()["detail"] == "invalid token: its tenant is disabled"
    reads = httpx.get(f"{api}{EVENTS}/{uuid.uuid4()}", headers=tenant.headers, timeout=10)
    assert reads.status_code == 401
    no_token = leadstream("token", "--tenant", tenant.name)
    assert no_token.returncode == 1 and "is disabled" in no_token.stderr

    assert leadstream("tenant", "enable", tenant.name).returncode == 0
    _eventually(api, tenant.token, 202)


def test_a_token_of_a_tenant_that_does_not_exist_is_refused(api: str, settings: Settings) -> None:
    stranger = mint_token(settings, tenant_id=uuid.uuid4(), scopes=(WRITE_SCOPE,), ttl_seconds=60)
    refused = _post(api, stranger)
    assert refused.status_code == 401, refused.text
    assert refused.json()["detail"] == "invalid token: its tenant does not exist"


@pytest.mark.parametrize(
    "command", [["tenant", "disable"], ["tenant", "enable"], ["token", "revoke", "--tenant"]]
)
def test_an_unknown_tenant_name_is_one_line(command: list[str], leadstream: Cli) -> None:
    result = leadstream(*command, f"nobody-{uuid.uuid4().hex[:6]}")
    assert result.returncode == 1
    assert result.stderr.startswith("leadstream: no tenant named")


async def test_events_accepted_before_a_disable_are_still_processed(
    engine: AsyncEngine, tenant: Tenant, worker: WorkerProcess, settings: Settings
) -> None:
    """A 202 was a promise: the worker stores a disabled tenant's events already queued."""
    async with engine.begin() as conn:
        await conn.execute(
            update(tenants_t).where(tenants_t.c.id == tenant.id).values(active=False)
        )
    e = envelope(tenant.id, {"type": "inquiry", "person": {"emails": ["kept@example.com"]}})
    broker = redis.Redis.from_url(settings.redis_url)
    push(broker, ("leads", message([e])), markers=[e])
    outcome = (await wait_outcomes(broker, [e.id]))[e.id]
    assert outcome.http_status == 201, outcome
