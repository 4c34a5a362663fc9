"""A Redis client on the tests' database, and queue names no worker consumes from."""

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from shared.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    # No socket timeout, as the API's writes client: RedisWriter bounds its calls itself.
    created = aioredis.Redis.from_url(settings.redis_url, socket_timeout=None)
    yield created
    await created.aclose()


@pytest.fixture
async def queues(client: aioredis.Redis) -> AsyncIterator[tuple[str, str]]:
    """Two queues of this test's own, so the messages stay for the test to read."""
    names = (f"test-lingering-{uuid.uuid4().hex}", f"test-eager-{uuid.uuid4().hex}")
    yield names
    await client.delete(*names)
