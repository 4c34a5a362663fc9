"""Fault injection on the real stack: a private Redis per test, and workers and APIs that a
test may kill.

Every fault test gets its own `redis-server` (broker and outcome store), so no other worker of
the session (the shared `worker` fixture listens on the shared Redis) takes its messages, and
the test may kill, pause or restart that Redis. PostgreSQL is the session's test database:
each test has its own tenant and only ever terminates its own workers' connections.
"""

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.processes import BIN, WorkerProcess, free_port, start_api, start_worker

# The shared checks live in a plain module: let pytest explain their failed assertions too.
pytest.register_assert_rewrite("tests.faults.support")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault injection on the real stack (kill -9, lost connections, outages)"
    )


# What the tests measured, printed at the end of the run --------------------------------------

_MEASUREMENTS: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def measure(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record what a test measured (counts, recovery times) for the summary at the end."""

    def record(**values: Any) -> None:
        _MEASUREMENTS.append((request.node.name, values))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _MEASUREMENTS:
        terminalreporter.section("fault measurements")
        for name, values in _MEASUREMENTS:
            terminalreporter.write_line(f"{name}: {json.dumps(values, default=str)}")


# A private Redis -----------------------------------------------------------------------------


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


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker(private_redis: RedisServer) -> Iterator[redis.Redis]:
    client = private_redis.client()
    yield client
    client.close()


@pytest.fixture
def fault_env(service_env: dict[str, str], private_redis: RedisServer) -> dict[str, str]:
    """The services' environment with this test's Redis as broker and outcome store."""
    return {**service_env, "LEADSTREAM_REDIS_URL": private_redis.url}


# Workers and APIs the test starts (and may kill) ---------------------------------------------


@dataclass
class Fleet:
    """Processes one test started; whatever still runs is stopped at teardown."""

    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker(
        self, env: dict[str, str], *, concurrency: int = 2, name: str = "worker"
    ) -> WorkerProcess:
        log = self.directory / f"{name}-{uuid.uuid4().hex[:6]}.log"
        started = start_worker(env, log, concurrency=concurrency)
        self.processes.append(started.process)
        return started

    def api(self, env: dict[str, str]) -> str:
        """`uvicorn ingest_api.app:create_app --factory` on a free port; returns its URL."""
        api = start_api(env, self.directory / f"api-{uuid.uuid4().hex[:6]}.log")
        self.processes.append(api.process)
        return api.url

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(tmp_path)
    yield started
    started.stop_all()
