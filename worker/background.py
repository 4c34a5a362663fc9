"""Work outside an event's transaction: the rest of a visitor backfill, and the retention purge.

Both are bounded per transaction, so neither holds locks or a worker for long, and both are
idempotent: running one twice, or concurrently, changes nothing more than once.
"""

from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.locks import lock_all, lock_key, purge_lock, visitor_lock
from shared.settings import Settings
from worker.matching.write import BACKFILL

_VISITOR_PERSON = text(
    "SELECT person_id FROM visitors WHERE tenant_id = :tenant_id AND visitor_id = :visitor_id"
)


async def backfill_visitor(
    engine: AsyncEngine, tenant_id: UUID, visitor_id: str, rows: int
) -> bool:
    """Attach the visitor's newest `rows` anonymous events to its person; True if more remain.

    Under the visitor's lock, as the worker's own backfill, and to the person the visitor
    belongs to now (not when the task was sent).
    """
    async with engine.begin() as conn:
        await lock_all(conn, [visitor_lock(tenant_id, visitor_id)])
        person_id = (
            await conn.execute(_VISITOR_PERSON, {"tenant_id": tenant_id, "visitor_id": visitor_id})
        ).scalar_one_or_none()
        if person_id is None:  # the person was deleted since: nothing to attach to
            return False
        attached = await conn.exec_driver_sql(
            BACKFILL, ([tenant_id], [visitor_id], [person_id], rows)
        )
        return bool(attached.rowcount >= rows)


# Oldest rows first, at most $2 per statement; ctid keeps the DELETE to the rows selected.
_PURGE = {
    "idempotency_keys": "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2))",
    "dead_letters": "DELETE FROM dead_letters WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM dead_letters WHERE failed_at < $1 ORDER BY failed_at LIMIT $2))",
}


async def purge_expired(engine: AsyncEngine, settings: Settings, now: datetime) -> dict[str, int]:
    """Delete up to `purge_rows_per_run` expired rows of each side table; rows deleted by table.

    Idempotency keys expire with the API's own window (`idempotency_ttl_seconds`): a key
    reused after it is a new event in both places. Dead letters expire after
    `dead_letter_retention_seconds`. One worker at a time purges (a try-lock: the others skip).
    """
    cutoffs = {
        "idempotency_keys": now - timedelta(seconds=settings.idempotency_ttl_seconds),
        "dead_letters": now - timedelta(seconds=settings.dead_letter_retention_seconds),
    }
    deleted = dict.fromkeys(_PURGE, 0)
    async with engine.begin() as conn:
        got = await conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": lock_key(purge_lock())}
        )
        if not got.scalar_one():
            return deleted
        for table, statement in _PURGE.items():
            result = await conn.exec_driver_sql(
                statement, (cutoffs[table], settings.purge_rows_per_run)
            )
            deleted[table] = result.rowcount
    return deleted
