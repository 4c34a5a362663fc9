"""Transactions of a message on real PostgreSQL: the lock budget, and splitting a message the
database cannot take in one transaction (SQLSTATE 53200, a repeated 57014)."""

import uuid
from collections.abc import AsyncIterator, Iterable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.support.messages import contact_rich, totals
from tests.support.tenants import Tenant
from worker.errors import Failure, TransientError, classify
from worker.matching import batch
from worker.unit_of_work import Limits, commit_batch, split_by_locks


def test_a_message_is_split_in_order_within_the_budget() -> None:
    events = contact_rich(uuid.uuid4(), 10)
    parts = split_by_locks(events, 50)
    assert [len(p) for p in parts] == [4, 4, 2]  # 12 locks each: 48 + 48 + 24
    assert [e for p in parts for e in p] == events
    assert split_by_locks(events[:1], 5) == [events[:1]]  # too big alone: a part of its own


async def test_events_needing_more_locks_than_the_budget_commit_each_once(
    engine: AsyncEngine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[int] = []
    real_lock_all = batch.lock_all

    async def counting(conn: AsyncConnection, names: Iterable[str]) -> None:
        names = set(names)
        taken.append(len(names))
        await real_lock_all(conn, names)

    monkeypatch.setattr(batch, "lock_all", counting)
    events = contact_rich(tenant.id, 30)
    result = await commit_batch(engine, events, limits=Limits(lock_budget=60))
    assert result.created_events == 30 and result.failed_events == 0
    assert len(taken) == 6 and max(taken) <= 60 and sum(taken) == 30 * 12
    assert await totals(engine, tenant.id) == {
        "events": 30,
        "people": 30,
        "emails": 150,
        "companies": 0,
    }
    # Redelivered whole, in one budget-less transaction: nothing is stored twice.
    again = await commit_batch(engine, events, limits=Limits(lock_budget=10_000))
    assert again.replayed_events == 30 and (await totals(engine, tenant.id))["events"] == 30


@pytest.fixture
async def lock_table_full(engine: AsyncEngine) -> AsyncIterator[str]:
    """PostgreSQL's own "out of shared memory" (53200) for any statement inserting more than
    two events carrying the marker: what a full lock table does to a big transaction."""
    async for marker in _too_big_fails(engine, "53200", "out of shared memory"):
        yield marker


@pytest.fixture
async def times_out(engine: AsyncEngine) -> AsyncIterator[str]:
    """A statement timeout (57014) for any statement inserting more than two marked events."""
    async for marker in _too_big_fails(engine, "57014", "canceling statement due to timeout"):
        yield marker


async def _too_big_fails(engine: AsyncEngine, state: str, message: str) -> AsyncIterator[str]:
    marker = f"big_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION {marker}() RETURNS trigger AS $$
            BEGIN
              IF (SELECT count(*) FROM new_rows WHERE message = '{marker}') > 2 THEN
                RAISE EXCEPTION '{message}' USING ERRCODE = '{state}';
              END IF;
              RETURN NULL;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {marker} AFTER INSERT ON events REFERENCING NEW TABLE AS "
                f"new_rows FOR EACH STATEMENT EXECUTE FUNCTION {marker}()"
            )
        )
    yield marker
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TRIGGER {marker} ON events"))
        await conn.execute(text(f"DROP FUNCTION {marker}()"))


async def test_out_of_shared_memory_splits_the_message_instead_of_retrying_it(
    engine: AsyncEngine, tenant: Tenant, lock_table_full: str
) -> None:
    events = contact_rich(tenant.id, 9, message=lock_table_full)
    # No TransientError (which the task would retry 40 times, failing alike every time).
    result = await commit_batch(engine, events)
    assert (result.created_events, result.failed_events) == (9, 0)
    assert set(result.outcomes) == {e.id for e in events}
    assert all(o.status == "processed" for o in result.outcomes.values())
    assert (await totals(engine, tenant.id))["events"] == 9


async def test_a_repeated_statement_timeout_splits_the_message(
    engine: AsyncEngine, tenant: Tenant, times_out: str
) -> None:
    events = contact_rich(tenant.id, 5, message=times_out)
    # The first time, a timeout may be load: the task retries the message later.
    with pytest.raises(TransientError):
        await commit_batch(engine, events)
    assert (await totals(engine, tenant.id))["events"] == 0
    # The retried message times out again: it is committed in halves, not retried 40 times.
    result = await commit_batch(engine, events, failed_before=True)
    assert (result.created_events, result.failed_events) == (5, 0)
    assert (await totals(engine, tenant.id))["events"] == 5


def _database_error(state: str) -> DBAPIError:
    class DriverError(Exception):
        sqlstate = state

    return DBAPIError("statement", {}, DriverError("failed"))


def test_the_classification_of_a_message_too_big_for_one_transaction() -> None:
    assert classify(_database_error("53200")) is Failure.SPLIT
    assert classify(_database_error("53200"), failed_before=True) is Failure.SPLIT
    # A statement timeout may be a passing spike once; on a message that failed before, it is
    # the message's size.
    assert classify(_database_error("57014")) is Failure.TRANSIENT
    assert classify(_database_error("57014"), failed_before=True) is Failure.SPLIT
    # Other resource shortages are still unavailability.
    assert classify(_database_error("53300"), failed_before=True) is Failure.TRANSIENT
