"""Real services for the tests: PostgreSQL, Redis, a Celery worker and the API as processes.

Services are found like `make run` finds them: LEADSTREAM_TEST_DATABASE_URL /
LEADSTREAM_TEST_REDIS_URL, else localhost, else testcontainers, else embedded servers. Each test
gets its own tenant, so tests share one database without seeing each other's rows.
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from shared.auth import ALL_SCOPES, mint_token
from shared.cli import migrate_database
from shared.services import Services, start_services
from shared.settings import Settings
from shared.tenants import ensure_tenant

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    found = start_services(
        data_dir=REPO / ".data" / "test",
        database_url=os.environ.get("LEADSTREAM_TEST_DATABASE_URL"),
        redis_url=os.environ.get("LEADSTREAM_TEST_REDIS_URL"),
        database_name=f"leadstream_test_{uuid.uuid4().hex[:8]}",
        redis_db=int(os.environ.get("LEADSTREAM_TEST_REDIS_DB", "15")),
    )
    redis.Redis.from_url(found.redis_url).flushdb()
    migrate_database(found.database_url)
    yield found
    if found.database_origin != "env":  # ours: leave the server as we found it
        asyncio.run(_drop_database(found.database_url))
    found.close()


async def _drop_database(url: str) -> None:
    target = make_url(url)
    engine = create_async_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        await engine.dispose()


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


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path


def start_worker(env: dict[str, str], log: Path, *, concurrency: int = 2) -> WorkerProcess:
    """A real `celery worker` on both queues; returns once it has said it is ready."""
    handle = log.open("wb")
    process = subprocess.Popen(
        [
            str(BIN / "celery"),
            "-A",
            "worker.app",
            "worker",
            "--queues",
            "leads,activity",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"test-{uuid.uuid4().hex[:6]}@%h",
        ],
        env=env,
        cwd=REPO,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while b" ready." not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return WorkerProcess(process, log)


@pytest.fixture(scope="session")
def worker(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    started = start_worker(service_env, tmp_path_factory.mktemp("worker") / "worker.log")
    yield started
    _stop(started.process)


@dataclass
class ApiProcess:
    process: subprocess.Popen[bytes]
    url: str


def start_api(env: dict[str, str], log: Path) -> ApiProcess:
    """A real `uvicorn ingest_api.app:create_app` on a free port, once /healthz answers."""
    port = _free_port()
    process = subprocess.Popen(
        [
            str(BIN / "uvicorn"),
            "ingest_api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return ApiProcess(process, url)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def api_url(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    api = start_api(service_env, tmp_path_factory.mktemp("api") / "api.log")
    yield api.url
    _stop(api.process)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    created = create_async_engine(settings.database_url, pool_size=10)
    yield created
    await created.dispose()


@dataclass
class Tenant:
    id: uuid.UUID
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_tenant(engine: AsyncEngine, settings: Settings, *, region: str = "US") -> Tenant:
    name = f"t-{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        tenant_id = await ensure_tenant(conn, name=name, default_region=region)
    token = mint_token(settings, tenant_id=tenant_id, scopes=ALL_SCOPES, ttl_seconds=3600)
    return Tenant(tenant_id, name, token)


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


async def wait_for_outcome(
    http: httpx.AsyncClient, event_id: str, timeout: float = 30
) -> httpx.Response:
    """Poll GET /events/{id} until it is no longer queued (no sleeps standing in for waiting)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await http.get(f"/api/partner/events/{event_id}")
        if response.status_code != 202:
            return response
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"event {event_id} still queued after {timeout}s")
        await asyncio.sleep(0.05)
