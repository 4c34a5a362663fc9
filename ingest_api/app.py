"""The app factory: `uvicorn ingest_api.app:create_app --factory`."""

import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from fastapi_offline import FastAPIOffline
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest_api.auth import TenantGate, TokenVerifier
from ingest_api.enqueuer import Enqueuer
from ingest_api.intake import Intake
from ingest_api.openapi import document
from ingest_api.problems import install_problem_handlers
from ingest_api.rate_limit import RateLimiter
from ingest_api.routes import companies, events, health, people
from ingest_api.sources import snippet
from ingest_api.sources.beacon import BEACON_PATH, serve_beacon
from ingest_api.sources.pixel import PIXEL_PATH, serve_pixel
from ingest_api.sources.site_keys import SiteKeys
from ingest_api.state import IngestState
from ingest_api.waiter import OutcomeWaiter
from shared.broker.writers import BrokerWriter, KombuWriter, RedisWriter
from shared.contract.outcomes import outcome_channel
from shared.contract.queues import ACTIVITY_QUEUE
from shared.db.engine import create_engine, migration_head
from shared.db.tenants import TenantStatus, tenant_status
from shared.logging import configure_logging
from shared.settings import Settings, get_settings

log = structlog.get_logger(__name__)

# A token's tenant is read once per LEADSTREAM_TENANT_CACHE_SECONDS: a cold connection may take
# this long, a hung database no longer.
TENANT_READ_TIMEOUT_SECONDS = 2.0


async def check_redis_eviction(client: aioredis.Redis, settings: Settings) -> None:
    """Eviction silently deletes queued events: refuse it in production, warn loudly in dev."""
    try:
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
    except RedisError as exc:
        log.warning("redis.policy_unknown", error=str(exc))
        return
    if policy != "noeviction":
        message = f"Redis maxmemory-policy is {policy!r}: queued events can be evicted (lost)"
        if settings.env == "prod":
            raise RuntimeError(message + "; set it to noeviction")
        log.warning("redis.eviction_enabled", policy=policy, detail=message)


async def check_redis_clock(client: aioredis.Redis, settings: Settings) -> None:
    """Enqueue deadlines are compared with Redis' clock: a skewed one refuses or admits late."""
    try:
        seconds, micros = await client.time()
    except RedisError as exc:
        log.warning("redis.clock_unknown", error=str(exc))
        return
    skew = seconds + micros / 1e6 - time.time()
    if abs(skew) > settings.enqueue_timeout_seconds / 5:
        log.warning(
            "redis.clock_skew",
            skew_seconds=round(skew, 3),
            detail="synchronise the clocks (NTP): enqueue deadlines depend on them",
        )


def _redis(settings: Settings, *, timeout: float | None) -> aioredis.Redis:
    # No client-side retries: a slow or absent Redis must turn into a quick 503, not a hang.
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=settings.enqueue_timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        max_connections=64,
    )


def _writer(settings: Settings, client: aioredis.Redis) -> BrokerWriter:
    options = {
        "marker_ttl": settings.queued_marker_ttl_seconds,
        "max_events_per_message": settings.enqueue_max_events_per_message,
    }
    if settings.broker_is_redis:
        return RedisWriter(client, **options)
    return KombuWriter(
        client,
        settings.celery_broker_url,
        connect_timeout=settings.enqueue_timeout_seconds,
        **options,
    )


def _enqueuer(settings: Settings, client: aioredis.Redis) -> Enqueuer:
    # A worker pays far more per message than per event, so one-event page-view messages
    # would cap it at a fraction of what it does with batches: they linger. Leads never wait.
    return Enqueuer(
        _writer(settings, client),
        timeout=settings.enqueue_timeout_seconds,
        linger={ACTIVITY_QUEUE: settings.enqueue_activity_linger_ms / 1000},
        flush_events={ACTIVITY_QUEUE: settings.enqueue_activity_flush_events},
    )


def _tenant_gate(settings: Settings, engine: AsyncEngine) -> TenantGate:
    async def read(tenant_id: UUID) -> TenantStatus | None:
        async with engine.connect() as conn:
            return await tenant_status(conn, tenant_id)

    return TenantGate(read, ttl=settings.tenant_cache_seconds, timeout=TENANT_READ_TIMEOUT_SECONDS)


def create_app(settings: Settings | None = None) -> Intake:
    settings = settings or get_settings()
    configure_logging(settings)
    verifier = TokenVerifier(settings)
    head = migration_head()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = _redis(settings, timeout=settings.enqueue_timeout_seconds)
        await check_redis_eviction(client, settings)
        await check_redis_clock(client, settings)
        engine = create_engine(settings)
        waiter = OutcomeWaiter(
            _redis(settings, timeout=None),
            engine,
            outcome_channel(settings.redis_url, settings.deployment_id),
            max_waiters=settings.max_waiters_per_process,
        )
        enqueuer = _enqueuer(settings, client)
        app.state.ingest = IngestState(
            settings=settings,
            token_verifier=verifier,
            tenants=_tenant_gate(settings, engine),
            migration_head=head,
            redis=client,
            enqueuer=enqueuer,
            waiter=waiter,
            engine=engine,
            limiter=RateLimiter(
                client,
                rate=settings.rate_limit_per_second,
                burst=settings.rate_limit_burst,
                timeout=settings.enqueue_timeout_seconds,
            ),
            sites=SiteKeys(
                engine,
                ttl=settings.site_key_cache_seconds,
                max_entries=settings.site_key_cache_size,
                timeout=settings.enqueue_timeout_seconds,
            ),
        )
        waiter.start()
        # Start-up objects live for the whole process: keep them out of every GC pass.
        gc.freeze()
        try:
            yield
        finally:
            del app.state.ingest
            await enqueuer.close()
            await waiter.stop()
            await client.aclose()
            await engine.dispose()

    # /docs from assets the API serves itself (a package's copy of Swagger UI), not a CDN: it
    # renders on a machine with no internet.
    app = FastAPIOffline(
        title="Leadstream",
        version="1",
        summary="Event ingestion compatible with Sure Send's POST /api/partner/events.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    install_problem_handlers(app)
    document(app, settings)
    for routes in (events, people, companies, health, snippet):
        app.include_router(routes.router)
    return Intake(app, verifier, {PIXEL_PATH: serve_pixel, BEACON_PATH: serve_beacon})
