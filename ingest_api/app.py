"""The app factory: `uvicorn ingest_api.app:create_app --factory`."""

import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ingest_api.auth import TokenVerifier
from ingest_api.enqueuer import Enqueuer, KombuEnqueuer, RedisEnqueuer
from ingest_api.intake import Intake, openapi_paths
from ingest_api.problems import install_problem_handlers
from ingest_api.routes import events, health, records
from ingest_api.state import IngestState
from ingest_api.waiter import OutcomeWaiter
from shared.contract.problems import Problem
from shared.db.engine import create_engine, migration_head
from shared.logging import configure_logging
from shared.settings import Settings, get_settings

log = structlog.get_logger(__name__)


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


def _document(app: FastAPI) -> None:
    """Add what FastAPI cannot see: the create route, and the Problem schema errors refer to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(problem.pop("$defs", {}))
            schemas["Problem"] = problem
            for path, operations in openapi_paths(schemas, events.PROBLEMS).items():
                schema["paths"].setdefault(path, {}).update(operations)
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def create_app(settings: Settings | None = None) -> Intake:
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = _redis(settings, timeout=settings.enqueue_timeout_seconds)
        waiter = OutcomeWaiter(_redis(settings, timeout=None))
        await check_redis_eviction(client, settings)
        await check_redis_clock(client, settings)
        engine = create_engine(settings)
        options = {
            "timeout": settings.enqueue_timeout_seconds,
            "marker_ttl": settings.queued_marker_ttl_seconds,
            "max_events_per_message": settings.enqueue_max_events_per_message,
            "activity_linger": settings.enqueue_activity_linger_ms / 1000,
            "activity_flush_events": settings.enqueue_activity_flush_events,
        }
        enqueuer: Enqueuer = (
            RedisEnqueuer(client, **options)
            if settings.broker_is_redis
            else KombuEnqueuer(client, settings.celery_broker_url, **options)
        )
        app.state.ingest = intake.state = IngestState(
            settings=settings,
            redis=client,
            enqueuer=enqueuer,
            waiter=waiter,
            engine=engine,
        )
        waiter.start()
        # Start-up objects live for the whole process: keep them out of every GC pass.
        gc.freeze()
        try:
            yield
        finally:
            await enqueuer.close()
            await waiter.stop()
            await client.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Leadstream",
        version="1",
        summary="Event ingestion compatible with Sure Send's POST /api/partner/events.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    verifier = TokenVerifier(settings)
    app.state.settings = settings
    app.state.token_verifier = verifier
    app.state.migration_head = migration_head()
    install_problem_handlers(app)
    _document(app)
    app.include_router(events.router)
    app.include_router(records.router)
    app.include_router(health.router)
    intake = Intake(app, verifier)
    return intake
