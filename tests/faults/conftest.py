"""Fault injection on the real stack: a private Redis per test, and workers and APIs that a
test may kill.

Every fault test gets its own `redis-server` (broker and outcome store), so no other worker of
the session (the shared `worker` fixture listens on the shared Redis) takes its messages, and
the test may kill, pause or restart that Redis. PostgreSQL is the session's test database:
each test has its own tenant and only ever terminates its own workers' connections.
"""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings
from tests.support.processes import free_port
from tests.support.tenants import Tenant

# The shared checks live in plain modules: let pytest explain their failed assertions too.
pytest.register_assert_rewrite("tests.faults.support", "tests.faults.stack")

from tests.faults.stack import FaultStack, Fleet, RedisServer  # noqa: E402 - rewritten first


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


# The stack ----------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def faults(
    fleet: Fleet,
    private_redis: RedisServer,
    service_env: dict[str, str],
    engine: AsyncEngine,
    tenant: Tenant,
    settings: Settings,
    measure: Callable[..., None],
) -> Iterator[FaultStack]:
    """This test's stack: its own Redis as broker and outcome store, the session's database."""
    broker = private_redis.client()
    yield FaultStack(
        fleet=fleet,
        redis_server=private_redis,
        broker=broker,
        env={**service_env, "LEADSTREAM_REDIS_URL": private_redis.url},
        engine=engine,
        tenant=tenant,
        settings=settings,
        measure=measure,
    )
    broker.close()
