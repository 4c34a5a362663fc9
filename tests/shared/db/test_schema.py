"""The migrated schema on real PostgreSQL: equal to shared/db/tables.py, and the plans that
must use an index (the timeline with and without `type=`, the foreign keys' ON DELETE), and the
timeline indexes' WHERE clause, which the comparison with tables.py cannot see."""

import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import reads
from shared.db.tables import Base
from tests.support.messages import envelope
from tests.support.tenants import Tenant
from worker.unit_of_work import commit_batch


async def test_the_migrations_make_the_tables_of_tables_py(engine: AsyncEngine) -> None:
    def differences(conn: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(differences) == []


@pytest.mark.parametrize("index", ["ix_events_timeline", "ix_events_timeline_type"])
async def test_the_timeline_indexes_hold_known_people_only(engine: AsyncEngine, index: str) -> None:
    # compare_metadata ignores postgresql_where: a migration that lost it would pass above.
    async with engine.connect() as conn:
        definition = await conn.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE tablename = 'events' AND indexname = :n"),
            {"n": index},
        )
    assert definition is not None, index
    assert definition.endswith(" WHERE (person_id IS NOT NULL)"), definition


async def plan_of(engine: AsyncEngine, sql: str, params: dict[str, Any]) -> str:
    """The plan PostgreSQL picks when a sequential scan is its last resort: a statement no
    index can serve still shows a Seq Scan on events."""
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        rows = await conn.execute(text(f"EXPLAIN {sql}"), params)
        return "\n".join(row[0] for row in rows)


@pytest.mark.parametrize("by_type", [False, True])
@pytest.mark.parametrize(("since", "before"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("without_bots", [False, True])
async def test_the_timeline_reads_an_index_of_known_people_only(
    engine: AsyncEngine, by_type: bool, since: bool, before: bool, without_bots: bool
) -> None:
    # The statement as the API prepares it, planned as PostgreSQL plans it after a few runs:
    # generically, without the parameters' values. Every filter must be an index condition of
    # an index read in the timeline's order, but for the bot flag, a filter on what it reads.
    # (Scans and sorts are made a last resort, so the plan does not depend on how few rows the
    # test database holds.)
    sql = reads.timeline_sql(by_type=by_type, since=since, before=before, without_bots=without_bots)
    values = [f"'{uuid.uuid4()}'", f"'{uuid.uuid4()}'"]
    values += ["'inquiry'"] * by_type + ["now()"] * since + ["now()", f"'{uuid.uuid4()}'"] * before
    async with engine.begin() as conn:
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            await conn.execute(text(f"SET LOCAL {setting} = off"))
        await conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        await conn.exec_driver_sql(f"PREPARE timeline AS {sql}")
        try:
            rows = await conn.exec_driver_sql(f"EXPLAIN EXECUTE timeline({', '.join(values)}, 50)")
            plan = "\n".join(row[0] for row in rows)
        finally:
            await conn.exec_driver_sql("DEALLOCATE timeline")
    index = "ix_events_timeline_type" if by_type else "ix_events_timeline "
    assert index in plan and "Seq Scan" not in plan and "Sort" not in plan, plan
    (cond,) = [line for line in plan.splitlines() if "Index Cond" in line]
    assert "person_id" in cond and ("event_type" in cond) is by_type, plan
    assert ("occurred_at" in cond) is (since or before), plan
    assert ("NOT bot" in plan) is without_bots, plan


@pytest.mark.parametrize("column", ["person_id", "company_id"])
async def test_deleting_a_person_or_company_does_not_scan_events(
    engine: AsyncEngine, column: str
) -> None:
    # What ON DELETE SET NULL runs for each deleted parent row.
    plan = await plan_of(
        engine,
        f"UPDATE events SET {column} = NULL WHERE {column} = CAST(:id AS uuid)",
        {"id": str(uuid.uuid4())},
    )
    assert "Seq Scan" not in plan and "Index" in plan, plan


async def test_a_visitor_row_is_rewritten_only_when_its_person_changes(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    visit = {"visitorId": f"v-{uuid.uuid4().hex[:8]}", "person": {"emails": ["v@example.com"]}}

    async def version() -> Any:
        async with engine.connect() as conn:
            return (
                await conn.execute(
                    text(
                        "SELECT xmin::text FROM visitors WHERE tenant_id = :t AND visitor_id = :v"
                    ),
                    {"t": tenant.id, "v": visit["visitorId"]},
                )
            ).scalar_one()

    await commit_batch(engine, [envelope(tenant.id, {"type": "inquiry", **visit})])
    first = await version()
    await commit_batch(engine, [envelope(tenant.id, {"type": "page_view", **visit})])
    assert await version() == first  # the same row version: not rewritten
