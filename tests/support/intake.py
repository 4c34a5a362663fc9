"""An intake served in process (httpx ASGITransport), with the state its lifespan would make."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import redis.asyncio as aioredis

from ingest_api.app import create_app
from ingest_api.auth import TenantGate
from ingest_api.enqueuer import Enqueuer
from ingest_api.intake import Intake
from ingest_api.rate_limit import RateLimiter
from ingest_api.sources.site_keys import SiteKeys
from ingest_api.sources.webhook_sources import WebhookSources
from ingest_api.state import IngestState
from ingest_api.waiter import OutcomeWaiter
from shared.broker.writers import BrokerWriter
from shared.db.engine import create_engine
from shared.db.tenants import TenantStatus
from shared.settings import Settings


async def _active_tenant(tenant_id: UUID) -> TenantStatus:
    # Every tenant exists and is active here: tests/ingest_api/test_auth.py tests the gate.
    return TenantStatus(tenant_id, active=True, token_version=0)


@asynccontextmanager
async def in_process_intake(
    settings: Settings, writer: BrokerWriter, *, tenants: TenantGate | None = None
) -> AsyncIterator[Intake]:
    """The app as uvicorn would serve it, its broker writes going to `writer`. Every tenant is
    active unless `tenants` says otherwise, and the rate limiter is off: what it decides needs Redis
    (tests/ingest_api/test_rate_limit.py)."""
    created = create_app(settings)
    client = aioredis.Redis.from_url(settings.redis_url)
    engine = create_engine(settings)
    created.app.state.ingest = IngestState(
        settings=settings,
        token_verifier=created.verifier,
        tenants=tenants or TenantGate(_active_tenant, ttl=60, timeout=1),
        migration_head=None,
        redis=client,
        enqueuer=Enqueuer(writer, timeout=0.5),
        waiter=OutcomeWaiter(
            client,
            engine,
            "ls:outcomes:intake-test:0",
            max_waiters=settings.max_waiters_per_process,
        ),
        engine=engine,
        limiter=RateLimiter(client, rate=0, burst=1, timeout=0.5),
        sites=SiteKeys(engine, ttl=30, max_entries=10, timeout=0.5),
        hook_sources=WebhookSources(engine, ttl=30, max_entries=10, timeout=0.5),
    )
    try:
        yield created
    finally:
        await client.aclose()
        await engine.dispose()
