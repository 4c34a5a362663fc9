"""The stack a fault test runs: a private Redis, the workers and API it starts (and may kill),
the session's database and the test's tenant, with the steps every fault test repeats."""

import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contract.outcomes import StoredOutcome
from shared.settings import Settings
from tests.faults.support import (
    FAST_REDELIVERY,
    Workload,
    assert_stored_exactly_once,
    blocked_backends,
    burst,
    connections_by_port,
    database_port,
    email_lock_key,
    eventually,
    outcomes_of,
    pool_children,
)
from tests.support.messages import push
from tests.support.processes import (
    BIN,
    WORKER_APP,
    WorkerProcess,
    start_api,
    start_worker,
    stop,
)
from tests.support.tenants import Tenant


@dataclass
class RedisServer:
    """A `redis-server` the test owns: it may be killed, paused and started again."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=2)

    def start(self) -> None:
        """Start (or start again, on the same port and data): returns once it answers."""
        # Append-only, fsync on every write: a restart keeps all the server acknowledged, so
        # an outage tests the app and not Redis' own durability settings.
        self.process = subprocess.Popen(
            [
                str(BIN / "redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--maxmemory-policy",
                "noeviction",
                "--dir",
                str(self.directory),
            ],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: from now on connections are refused."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung or cut-off broker)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()


@dataclass
class Fleet:
    """Processes one test started; whatever still runs is stopped at teardown."""

    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker(
        self,
        env: dict[str, str],
        *,
        concurrency: int = 2,
        name: str = "worker",
        app: str = WORKER_APP,
    ) -> WorkerProcess:
        log = self.directory / f"{name}-{uuid.uuid4().hex[:6]}.log"
        started = start_worker(env, log, concurrency=concurrency, app=app)
        self.processes.append(started.process)
        return started

    def api(self, env: dict[str, str]) -> str:
        """`uvicorn ingest_api.app:create_app --factory` on a free port; returns its URL."""
        api = start_api(env, self.directory / f"api-{uuid.uuid4().hex[:6]}.log")
        self.processes.append(api.process)
        return api.url

    def stop_all(self) -> None:
        stop(*self.processes, timeout=10)


@dataclass
class FaultStack:
    """One fault test's world, and the steps its tests share."""

    fleet: Fleet
    redis_server: RedisServer  # the broker and outcome store: may be killed, paused, restarted
    broker: redis.Redis
    env: dict[str, str]  # the services' environment, with `redis_server` as broker
    engine: AsyncEngine
    tenant: Tenant
    settings: Settings
    measure: Callable[..., None]  # record what the test measured, for the summary

    @cached_property
    def db_port(self) -> int:
        """PostgreSQL's TCP port (the test is skipped without one: see `database_port`)."""
        return database_port(self.settings)

    def worker(
        self,
        *,
        name: str,
        concurrency: int = 2,
        fast_redelivery: bool = False,
        settings: dict[str, str] | None = None,
        app: str = WORKER_APP,
    ) -> WorkerProcess:
        """A worker on this stack's Redis; `settings`: LEADSTREAM_* variables to override;
        `app`: see `start_worker`."""
        env = {**self.env, **(FAST_REDELIVERY if fast_redelivery else {}), **(settings or {})}
        return self.fleet.worker(env, concurrency=concurrency, name=name, app=app)

    @asynccontextmanager
    async def api_client(self) -> AsyncIterator[httpx.AsyncClient]:
        """An API of this stack's own, and a client authenticated as the test's tenant."""
        url = self.fleet.api(self.env)
        async with httpx.AsyncClient(base_url=url, headers=self.tenant.headers, timeout=10) as http:
            yield http

    def burst(self, **shape: Any) -> Workload:
        """A workload for the test's tenant (see `support.burst`)."""
        return burst(self.tenant.id, **shape)

    def push(self, work: Workload, messages: list[tuple[str, bytes]] | None = None) -> None:
        """Queue the workload's messages (or some of them) with every event marked queued."""
        push(
            self.broker, *(work.messages if messages is None else messages), markers=work.envelopes
        )

    async def outcomes(self, work: Workload, *, timeout: float) -> dict[uuid.UUID, StoredOutcome]:
        return await outcomes_of(self.broker, self.engine, work, timeout=timeout)

    async def stored_exactly_once(self, work: Workload) -> dict[str, int]:
        return await assert_stored_exactly_once(self.engine, work)

    @asynccontextmanager
    async def first_email_locked(self, work: Workload) -> AsyncIterator[None]:
        """Hold the advisory lock of the workload's first e-mail: the batches that name it stop
        inside their transaction until the block ends."""
        lock = email_lock_key(self.tenant.id, work.envelopes[0].payload["metadata"]["email"])
        async with self.engine.connect() as holder:
            await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock})
            await holder.commit()
            yield
            await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock})
            await holder.commit()

    async def waiting_on_a_lock(self, worker: WorkerProcess) -> set[int]:
        """The worker's pool processes whose transaction waits on an advisory lock."""
        async with self.engine.connect() as conn:
            blocked = await blocked_backends(conn)
        ours = connections_by_port(pool_children(worker), self.db_port)
        return {pid for port, pid in ours.items() if port in blocked}

    async def batch_stopped_midway(self, *workers: WorkerProcess) -> set[int]:
        """Wait until each worker has a batch waiting on the held lock; their pool pids."""
        found: set[int] = set()

        async def stopped() -> bool:
            waiting = [await self.waiting_on_a_lock(w) for w in workers]
            found.update(*waiting)
            return all(waiting)

        await eventually(stopped, timeout=20, what="a batch waiting on the held lock")
        return found
