"""PostgreSQL's shared lock table, really filled: a private server with a tiny one
(`max_locks_per_transaction` 10), so the shared servers are not disturbed.

Advisory locks are never fast-path locks: each one takes an entry of the cluster-wide table,
which holds about max_locks_per_transaction x (max_connections + background workers) entries.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from structlog.testing import capture_logs

from ops.local_services import _create_database
from shared.db.engine import migrate_database
from shared.settings import Settings
from tests.support.messages import contact_rich, totals
from tests.support.tenants import make_tenant
from worker.unit_of_work import Limits, commit_batch

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def small_lock_table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a fresh database on a private PostgreSQL whose lock table is tiny."""
    from pgserver.postgres_server import get_server

    pgdata: Path = tmp_path_factory.mktemp("small-lock-table") / "pg"
    server = get_server(pgdata, cleanup_mode="stop")
    server.psql("ALTER SYSTEM SET max_locks_per_transaction = 10;")
    server.psql("ALTER SYSTEM SET max_connections = 20;")
    server.cleanup()  # both settings take effect at the next start
    server = get_server(pgdata, cleanup_mode="stop")
    try:
        assert "10" in server.psql("SHOW max_locks_per_transaction;")
        socket_dir = str(server.get_postmaster_info().socket_dir)
        asyncio.run(_create_database("locks", host=socket_dir))
        url = f"postgresql+asyncpg://postgres@/locks?host={socket_dir}"
        migrate_database(url)
        yield url
    finally:
        server.cleanup()


@pytest.fixture
async def small_engine(small_lock_table: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(small_lock_table, pool_size=2)
    yield engine
    await engine.dispose()


def _splits(logs: list[dict[str, Any]]) -> list[str]:
    return [entry.get("sqlstate", "") for entry in logs if entry["event"] == "batch.split"]


async def test_a_full_lock_table_splits_the_message_and_commits_every_event_once(
    small_engine: AsyncEngine, settings: Settings
) -> None:
    tenant = await make_tenant(small_engine, settings)
    # 2,400 advisory locks: the table's ~300 entries (10 x (20 connections + background
    # workers)) can borrow PostgreSQL's spare shared memory, which 720 locks sometimes fit in.
    events = contact_rich(tenant.id, 200)
    with capture_logs() as logs:
        # A budget above the table's size: PostgreSQL itself answers 53200.
        result = await commit_batch(small_engine, events, limits=Limits(lock_budget=100_000))
    assert "53200" in _splits(logs)  # the real "out of shared memory", then halves
    assert (result.created_events, result.failed_events) == (200, 0)
    assert await totals(small_engine, tenant.id) == {
        "events": 200,
        "people": 200,
        "emails": 1000,
        "companies": 0,
    }


async def test_a_budget_within_the_table_never_fills_it(
    small_engine: AsyncEngine, settings: Settings
) -> None:
    tenant = await make_tenant(small_engine, settings)
    events = contact_rich(tenant.id, 60)
    with capture_logs() as logs:
        result = await commit_batch(small_engine, events, limits=Limits(lock_budget=120))
    assert _splits(logs) == [] and any(e["event"] == "batch.split_by_locks" for e in logs)
    assert result.created_events == 60 and (await totals(small_engine, tenant.id))["events"] == 60
