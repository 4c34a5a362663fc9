"""Real services for the tests: PostgreSQL, Redis, a Celery worker and the API as processes.

Services are found like `make run` finds them: LEADSTREAM_TEST_DATABASE_URL /
LEADSTREAM_TEST_REDIS_URL, else localhost, else testcontainers, else embedded servers. Each test
gets its own tenant, so tests share one database without seeing each other's rows.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ops.local_services import Services, drop_database, start_services
from shared.db.engine import migrate_database
from shared.settings import Settings
from tests.support import redis_dbs
from tests.support.processes import BIN, REPO, WorkerProcess, start_api, start_worker, stop
from tests.support.tenants import Tenant, make_tenant


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    found = start_services(
        data_dir=REPO / ".data" / "test",
        database_url=os.environ.get("LEADSTREAM_TEST_DATABASE_URL"),
        redis_url=os.environ.get("LEADSTREAM_TEST_REDIS_URL"),
        database_name=f"leadstream_test_{uuid.uuid4().hex[:8]}",
        redis_db=redis_dbs.SESSION,
    )
    redis.Redis.from_url(found.redis_url).flushdb()
    migrate_database(found.database_url)
    yield found
    if found.database_origin != "env":  # ours: leave the server as we found it
        asyncio.run(drop_database(found.database_url))
    for db in redis_dbs.ALL:  # and leave no keys behind for the next run to trip on
        redis.Redis.from_url(redis_dbs.redis_url_with_db(found.redis_url, db)).flushdb()
    found.close()


@pytest.fixture(scope="session")
def settings(services: Services) -> Settings:
    return Settings(
        database_url=services.database_url, redis_url=services.redis_url, log_format="json"
    )


@pytest.fixture(scope="session")
def service_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "LEADSTREAM_DATABASE_URL": settings.database_url,
        "LEADSTREAM_REDIS_URL": settings.redis_url,
        "LEADSTREAM_LOG_FORMAT": "json",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


@pytest.fixture(scope="session")
def worker(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    started = start_worker(service_env, tmp_path_factory.mktemp("worker") / "worker.log")
    yield started
    stop(started.process)


@pytest.fixture(scope="session")
def api_url(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    api = start_api(service_env, tmp_path_factory.mktemp("api") / "api.log")
    yield api.url
    stop(api.process)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    created = create_async_engine(settings.database_url, pool_size=10)
    yield created
    await created.dispose()


@pytest.fixture
async def tenant(engine: AsyncEngine, settings: Settings) -> Tenant:
    return await make_tenant(engine, settings)


@pytest.fixture
async def client(
    api_url: str, worker: WorkerProcess, tenant: Tenant
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the running API, authenticated as this test's tenant."""
    async with httpx.AsyncClient(base_url=api_url, headers=tenant.headers, timeout=40) as http:
        yield http
