"""The app factory: `uvicorn ingest_api.app:create_app --factory`."""

import asyncio
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
from redis.exceptions import RedisError, ResponseError
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
from ingest_api.sources.segment import PATHS as SEGMENT_PATHS
from ingest_api.sources.segment import serve_segment
from ingest_api.sources.site_keys import SiteKeys
from ingest_api.sources.webhook_sources import WebhookSources
from ingest_api.sources.webhooks import HOOKS_PREFIX, serve_webhook
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


async def redis_policy_problem(client: aioredis.Redis, settings: Settings) -> str | None:
    """Why queued events may be evicted (lost), or None for `noeviction`.

    A policy that cannot be read (a managed Redis that refuses CONFIG) counts as evicting,
    unless the operator confirmed noeviction with LEADSTREAM_REDIS_POLICY_CHECKED. Raises
    RedisError when Redis does not answer at all.
    """
    try:
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
    except ResponseError as exc:
        if settings.redis_policy_checked:
            return None
        return (
            f"Redis maxmemory-policy cannot be read ({exc}): queued events may be evicted;"
            " allow CONFIG GET, or set LEADSTREAM_REDIS_POLICY_CHECKED=true once verified"
        )
    if policy != "noeviction":
        return f"Redis maxmemory-policy is {policy!r}: queued events can be evicted (lost)"
    return None


async def check_redis_eviction(client: aioredis.Redis, settings: Settings) -> str | None:
    """At start-up: refuse an evicting or unknown policy in production, warn loudly in dev;
    the problem, or None."""
    try:
        problem = await redis_policy_problem(client, settings)
    except RedisError as exc:
        problem = f"Redis maxmemory-policy is unknown, Redis did not answer: {exc}"
    if problem is None:
        return None
    if settings.env == "prod":
        raise RuntimeError(problem + "; production requires noeviction")
    log.warning("redis.eviction_enabled", detail=problem)
    return problem


async def watch_redis_eviction(
    client: aioredis.Redis, settings: Settings, state: IngestState
) -> None:
    """Recheck the policy while the API runs (a CONFIG SET changes it): an evicting or unknown
    one is logged as an error and keeps /readyz not ready until it is fixed."""
    while True:
        await asyncio.sleep(settings.redis_policy_recheck_seconds)
        try:
            problem = await redis_policy_problem(client, settings)
        except RedisError:
            continue  # Redis does not answer: /readyz says so by itself
        if problem is not None and problem != state.redis_policy_problem:
            log.error("redis.eviction_policy", detail=problem)
        elif problem is None and state.redis_policy_problem is not None:
            log.info("redis.eviction_policy_fixed")
        state.redis_policy_problem = problem


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


def _redis(
    settings: Settings,
    *,
    timeout: float | None,
    connect_timeout: float | None,
    max_connections: int,
    pool_timeout: float,
) -> aioredis.Redis:
    # No client-side retries: a slow or absent Redis must turn into a quick 503, not a hang.
    # A blocking pool: a burst waits up to `pool_timeout` for a connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis(connection_pool=pool)


def _writer(settings: Settings, client: aioredis.Redis) -> BrokerWriter:
    options = {
        "marker_ttl": settings.queued_marker_ttl_seconds,
        "key_ttl": settings.idempotency_ttl_seconds,
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
        timeout = settings.enqueue_timeout_seconds
        # Writes: no socket or connect timeout (RedisWriter bounds its calls itself, so that
        # a loaded event loop is not taken for a slow Redis); a connection is waited for up to
        # the enqueue timeout.
        client = _redis(
            settings, timeout=None, connect_timeout=None, max_connections=64, pool_timeout=timeout
        )
        # Reads (GET routes, /readyz) have a pool of their own: a burst of writes cannot
        # starve them, nor make /readyz call a healthy Redis down.
        reads = _redis(
            settings,
            timeout=timeout,
            connect_timeout=timeout,
            max_connections=16,
            pool_timeout=timeout,
        )
        policy_problem = await check_redis_eviction(client, settings)
        await check_redis_clock(client, settings)
        engine = create_engine(settings)
        waiter = OutcomeWaiter(
            _redis(
                settings,
                timeout=None,
                connect_timeout=timeout,
                max_connections=64,
                pool_timeout=timeout,
            ),
            engine,
            outcome_channel(settings.redis_url, settings.deployment_id),
            max_waiters=settings.max_waiters_per_process,
        )
        enqueuer = _enqueuer(settings, client)
        state = IngestState(
            settings=settings,
            token_verifier=verifier,
            tenants=_tenant_gate(settings, engine),
            migration_head=head,
            redis=reads,
            enqueuer=enqueuer,
            waiter=waiter,
            engine=engine,
            limiter=RateLimiter(
                client,
                rate=settings.rate_limit_per_second,
                burst=settings.rate_limit_burst,
                # A fifth of the enqueue's time: a hung Redis must not add a whole enqueue
                # timeout to every request's 503 (the limiter fails open).
                timeout=timeout / 5,
            ),
            sites=SiteKeys(
                engine,
                ttl=settings.site_key_cache_seconds,
                max_entries=settings.site_key_cache_size,
                timeout=settings.enqueue_timeout_seconds,
            ),
            hook_sources=WebhookSources(
                engine,
                ttl=settings.site_key_cache_seconds,
                max_entries=settings.site_key_cache_size,
                timeout=settings.enqueue_timeout_seconds,
            ),
            redis_policy_problem=policy_problem,
        )
        app.state.ingest = state
        watch = asyncio.create_task(watch_redis_eviction(reads, settings, state))
        waiter.start()
        # Start-up objects live for the whole process: keep them out of every GC pass.
        gc.freeze()
        try:
            yield
        finally:
            del app.state.ingest
            watch.cancel()
            await enqueuer.close()
            await waiter.stop()
            await client.aclose()
            await reads.aclose()
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
    return Intake(
        app,
        verifier,
        {
            PIXEL_PATH: serve_pixel,
            BEACON_PATH: serve_beacon,
            HOOKS_PREFIX: serve_webhook,
            **dict.fromkeys(SEGMENT_PATHS, serve_segment),
        },
    )
