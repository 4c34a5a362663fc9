"""Whose token is good: its tenant must exist, be active and not have revoked it. Checked per
API process from a cache (no PostgreSQL read per request), in-process: no Redis, no database;
and the token cache, bounded, forgets only the stalest token."""

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from ingest_api import auth
from ingest_api.auth import TenantGate, TokenVerifier
from ingest_api.problems import ProblemError
from shared.auth import ALL_SCOPES, READ_SCOPE, WRITE_SCOPE, Principal, mint_token
from shared.db.tenants import TenantStatus
from shared.settings import Settings
from tests.support.intake import in_process_intake
from tests.support.writers import StandInWriter

EVENTS = "/api/partner/events"
PAGE_VIEW = {"type": "page_view", "visitorId": "v"}
TTL = 30.0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Nothing listens there: a test that reached Redis or PostgreSQL would fail, not pass.
SETTINGS = Settings(
    redis_url=f"redis://127.0.0.1:{_closed_port()}/0",
    database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/none",
    max_wait_seconds=0,
    log_format="json",
)


class Tenants:
    """The tenants table as the gate reads it: counts reads, can be down or held."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, TenantStatus] = {}
        self.reads = 0
        self.down = False
        self.held: asyncio.Event | None = None

    def add(self, *, active: bool = True, token_version: int = 0) -> uuid.UUID:
        tenant_id = uuid.uuid4()
        self.rows[tenant_id] = TenantStatus(tenant_id, active, token_version)
        return tenant_id

    def update(self, tenant_id: uuid.UUID, **changes: Any) -> None:
        row = self.rows[tenant_id]
        self.rows[tenant_id] = TenantStatus(
            tenant_id,
            changes.get("active", row.active),
            changes.get("token_version", row.token_version),
        )

    async def read(self, tenant_id: uuid.UUID) -> TenantStatus | None:
        self.reads += 1
        if self.held is not None:
            await self.held.wait()
        if self.down:
            raise OperationalError("SELECT", {}, ConnectionRefusedError("refused"))
        return self.rows.get(tenant_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tenants() -> Tenants:
    return Tenants()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gate(tenants: Tenants, clock: Clock) -> TenantGate:
    return TenantGate(tenants.read, ttl=TTL, timeout=1.0, clock=clock)


def _principal(tenant_id: uuid.UUID, version: int = 0) -> Principal:
    return Principal(tenant_id=tenant_id, scopes=frozenset(ALL_SCOPES), token_version=version)


async def _refused(gate: TenantGate, principal: Principal) -> ProblemError:
    with pytest.raises(ProblemError) as refused:
        await gate.check(principal)
    return refused.value


async def test_an_active_tenant_passes_and_is_read_once_per_period(
    gate: TenantGate, tenants: Tenants, clock: Clock
) -> None:
    tenant = tenants.add()
    for _ in range(100):
        await gate.check(_principal(tenant))
    assert tenants.reads == 1
    clock.now += TTL + 1
    await gate.check(_principal(tenant))
    assert tenants.reads == 2


@pytest.mark.parametrize(
    ("row", "version", "why"),
    [
        (None, 0, "its tenant does not exist"),
        ({"active": False}, 0, "its tenant is disabled"),
        ({"token_version": 3}, 2, "it was revoked"),
    ],
)
async def test_a_token_its_tenant_refuses_is_401(
    gate: TenantGate,
    tenants: Tenants,
    row: dict[str, Any] | None,
    version: int,
    why: str,
) -> None:
    tenant = tenants.add(**row) if row is not None else uuid.uuid4()
    refused = await _refused(gate, _principal(tenant, version))
    assert (refused.status, refused.kind, refused.detail) == (
        401,
        "unauthorized",
        f"invalid token: {why}",
    )
    assert refused.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}


async def test_a_disable_or_revocation_takes_effect_within_the_period(
    gate: TenantGate, tenants: Tenants, clock: Clock
) -> None:
    tenant = tenants.add()
    await gate.check(_principal(tenant))
    tenants.update(tenant, active=False)
    clock.now += TTL - 1
    await gate.check(_principal(tenant))  # remembered: still good within the period
    clock.now += 2
    refused = await _refused(gate, _principal(tenant))
    assert refused.detail == "invalid token: its tenant is disabled"

    tenants.update(tenant, active=True, token_version=1)
    clock.now += TTL + 1
    assert (await _refused(gate, _principal(tenant, 0))).detail == "invalid token: it was revoked"
    await gate.check(_principal(tenant, 1))


async def test_a_token_minted_after_a_revocation_works_before_the_cache_knows(
    gate: TenantGate, tenants: Tenants
) -> None:
    tenant = tenants.add()
    await gate.check(_principal(tenant, 0))
    tenants.update(tenant, token_version=1)
    await gate.check(_principal(tenant, 1))  # versions only grow: the new token is good
    assert tenants.reads == 1


async def test_concurrent_requests_of_a_new_tenant_share_one_read(
    gate: TenantGate, tenants: Tenants
) -> None:
    tenant = tenants.add()
    tenants.held = asyncio.Event()
    checks = [asyncio.create_task(gate.check(_principal(tenant))) for _ in range(50)]
    await asyncio.sleep(0)  # let them all reach the gate
    tenants.held.set()
    await asyncio.gather(*checks)
    assert tenants.reads == 1


async def test_while_the_database_is_down_the_last_status_stands(
    gate: TenantGate, tenants: Tenants, clock: Clock
) -> None:
    known, disabled, unseen = tenants.add(), tenants.add(active=False), tenants.add()
    await gate.check(_principal(known))
    await _refused(gate, _principal(disabled))
    tenants.down = True
    clock.now += TTL + 1
    await gate.check(_principal(known))
    await _refused(gate, _principal(disabled))  # fails closed for what was refused
    refused = await _refused(gate, _principal(unseen))
    assert (refused.status, refused.kind, refused.headers) == (
        503,
        "unavailable",
        {"Retry-After": "1"},
    )
    reads = tenants.reads
    await gate.check(_principal(known))  # not asked again at once
    assert tenants.reads == reads
    clock.now += 6  # but again within seconds, not a whole period
    tenants.down = False
    tenants.update(known, active=False)
    await _refused(gate, _principal(known))


async def test_the_cache_is_bounded(tenants: Tenants, clock: Clock) -> None:
    gate = TenantGate(tenants.read, ttl=TTL, timeout=1.0, clock=clock, max_tenants=2)
    many = [tenants.add() for _ in range(5)]
    for tenant in many * 2:
        await gate.check(_principal(tenant))
    assert len(gate._known) <= 2  # the bound is what this test is about


# The intake, with the gate in front of it.


def _token(tenant_id: uuid.UUID, *scopes: str, version: int = 0) -> dict[str, str]:
    token = mint_token(
        SETTINGS,
        tenant_id=tenant_id,
        scopes=scopes or (WRITE_SCOPE,),
        ttl_seconds=60,
        token_version=version,
    )
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def writer() -> StandInWriter:
    return StandInWriter()


@pytest.fixture
async def http(writer: StandInWriter, gate: TenantGate) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_intake(SETTINGS, writer, tenants=gate) as created:
        transport = httpx.ASGITransport(app=created)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
            yield http


async def test_the_intake_queues_nothing_for_a_token_its_tenant_refuses(
    http: httpx.AsyncClient, tenants: Tenants, writer: StandInWriter
) -> None:
    refused = {
        "unknown": _token(uuid.uuid4()),
        "disabled": _token(tenants.add(active=False)),
        "revoked": _token(tenants.add(token_version=1), version=0),
    }
    for why, headers in refused.items():
        for path, body in ((EVENTS, PAGE_VIEW), (f"{EVENTS}/batch", {"events": [PAGE_VIEW]})):
            response = await http.post(path, json=body, headers=headers)
            assert response.status_code == 401, (why, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
    assert writer.written == []
    accepted = await http.post(EVENTS, json=PAGE_VIEW, headers=_token(tenants.add()))
    assert accepted.status_code == 202, accepted.text
    assert len(writer.written) == 1


async def test_a_token_carries_only_the_scopes_it_was_minted_with(
    http: httpx.AsyncClient, tenants: Tenants, writer: StandInWriter
) -> None:
    tenant = tenants.add()
    writer_only, reader_only = _token(tenant, WRITE_SCOPE), _token(tenant, READ_SCOPE)
    for path in (f"{EVENTS}/{uuid.uuid4()}", f"/api/partner/people/{uuid.uuid4()}"):
        response = await http.get(path, headers=writer_only)
        assert response.status_code == 403, response.text
        assert "events:read" in response.json()["detail"]
    response = await http.post(EVENTS, json=PAGE_VIEW, headers=reader_only)
    assert response.status_code == 403, response.text
    assert writer.written == []


async def test_reads_refuse_a_revoked_token_before_the_scope(
    http: httpx.AsyncClient, tenants: Tenants
) -> None:
    tenant = tenants.add(token_version=2)
    response = await http.get(f"{EVENTS}/{uuid.uuid4()}", headers=_token(tenant, version=1))
    assert response.status_code == 401, response.text
    assert response.json()["detail"] == "invalid token: it was revoked"


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
