"""What a running API process holds, made by the lifespan and shared by every route."""

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest_api.auth import TenantGate, TokenVerifier
from ingest_api.enqueuer import Enqueuer
from ingest_api.rate_limit import RateLimiter
from ingest_api.sources.site_keys import SiteKeys
from ingest_api.sources.webhook_sources import WebhookSources
from ingest_api.waiter import OutcomeWaiter
from shared.settings import Settings


@dataclass
class IngestState:
    settings: Settings
    token_verifier: TokenVerifier
    tenants: TenantGate
    migration_head: str | None
    # Reads and small bookkeeping (GET routes, /readyz, webhook replay markers): the event
    # writes have their own pool.
    redis: aioredis.Redis
    enqueuer: Enqueuer
    waiter: OutcomeWaiter
    engine: AsyncEngine
    limiter: RateLimiter
    sites: SiteKeys
    hook_sources: WebhookSources
    # Set at start-up and by the periodic recheck: why Redis may evict queued events.
    redis_policy_problem: str | None = None


async def _state(request: Request) -> IngestState:
    # async: FastAPI would run a plain function in its thread pool.
    state: IngestState = request.app.state.ingest
    return state


StateDep = Annotated[IngestState, Depends(_state)]
