"""What a running API process holds: clients made in the lifespan, shared by the routes."""

from dataclasses import dataclass

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest_api.enqueuer import Enqueuer
from ingest_api.waiter import OutcomeWaiter
from shared.settings import Settings


@dataclass
class IngestState:
    settings: Settings
    redis: aioredis.Redis
    enqueuer: Enqueuer
    waiter: OutcomeWaiter
    engine: AsyncEngine
