"""The bench's stack: its services and fixtures, and the processes it measures."""

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from bench import procs
from bench.procs import Child
from bench.results import Config
from ops import local_services, processes
from ops.processes import REPO
from shared.db.sites import create_site
from shared.db.tenants import ensure_tenant
from shared.settings import Settings

BENCH_ORIGIN = "https://bench.example"  # bench/lua/beacon.lua's Origin

# Services and fixtures ------------------------------------------------------------------------


def asyncpg_args(database_url: str, database: str | None = None) -> dict[str, Any]:
    """asyncpg.connect() keywords for a SQLAlchemy URL (TCP, or a socket dir in ?host=)."""
    url = make_url(database_url)
    host = url.query.get("host")
    return {
        "host": host if isinstance(host, str) else (url.host or "127.0.0.1"),
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password,
        "database": database or url.database,
    }


def drop_database(database_url: str) -> None:
    try:
        asyncio.run(local_services.drop_database(database_url))
    except (OSError, SQLAlchemyError) as exc:
        print(f"bench: could not drop the bench database: {exc!r}", file=sys.stderr)


def flush_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


async def make_tenant(settings: Settings) -> str:
    engine = create_async_engine(settings.database_url)
    try:
        _, token = await local_services.tenant_with_token(
            engine, settings, name="bench", region="US", ttl_seconds=24 * 3600
        )
    finally:
        await engine.dispose()
    return token


async def make_site_key(settings: Settings) -> str:
    """A site key of the bench's tenant, for the pixel and beacon references."""
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            tenant_id = await ensure_tenant(conn, name="bench", default_region="US")
            site = await create_site(conn, tenant_id=tenant_id, origins=[BENCH_ORIGIN])
    finally:
        await engine.dispose()
    return site.key


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine_info(database_url: str, redis_url: str) -> dict[str, str]:
    from importlib.metadata import version

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"

    async def pg_version() -> str:
        conn = await asyncpg.connect(**asyncpg_args(database_url), timeout=10)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in ("fastapi", "uvicorn", "pydantic", "celery", "redis", "asyncpg", "sqlalchemy")
    )
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": asyncio.run(pg_version()),
        "redis": redis_version,
        "wrk": _version(["wrk", "--version"]).split(" [")[0],
        "packages": packages,
        "commit": commit + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
    }


# Processes --------------------------------------------------------------------------------------


@dataclass
class Stack:
    """What the e2e phases need: service URLs, the token, and the running processes."""

    config: Config
    env: dict[str, str]
    workdir: Path
    database_url: str
    redis_url: str
    token: str
    run_id: str
    site_key: str = ""
    api: Child | None = None
    api_url: str = ""
    worker: Child | None = None
    extra: list[Child] = field(default_factory=list)  # wrk, py-spy: stopped on any exit

    def stop_extra(self) -> None:
        for child in self.extra:
            procs.stop(child, timeout=5)


def start_uvicorn(
    stack: ExitStack,
    s: Stack,
    name: str,
    app: str,
    *,
    factory: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[Child, str]:
    """`app` on a free port, with the stack's environment (and `env` over it)."""
    port = processes.free_port()
    argv = processes.api_argv(port=port, app=app, factory=factory)
    child = procs.spawn(
        name, argv, env={**s.env, **(env or {})}, cwd=REPO, log=s.workdir / f"{name}.log"
    )
    stack.callback(procs.stop, child)
    procs.wait_for_port(child, port, timeout=30)
    return child, f"http://127.0.0.1:{port}"


def start_worker(stack: ExitStack, s: Stack) -> Child:
    argv = processes.worker_argv(concurrency=2, node=f"bench-{s.run_id}@%h")
    child = procs.spawn("worker", argv, env=s.env, cwd=REPO, log=s.workdir / "worker.log")
    stack.callback(procs.stop, child)
    processes.wait_until(
        processes.worker_ready(child.log),
        child.proc,
        child.log,
        timeout=60,
        what="the worker",
        interval=0.1,
    )
    return child


def wait_api_idle(api_url: str, timeout: float = 15.0) -> None:
    """Until the accepted counter stops moving: no request of a finished wrk is still queuing."""

    def accepted() -> float:
        text = httpx.get(f"{api_url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("leadstream_events_accepted_total{")
        )

    deadline = time.monotonic() + timeout
    last = accepted()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = accepted()
        if now == last:
            return
        last = now
