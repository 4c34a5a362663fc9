"""Alembic environment: async engine from LEADSTREAM_DATABASE_URL (or the caller's URL)."""

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db.tables import Base
from shared.settings import get_settings

target_metadata = Base.metadata

# `leadstream migrate` (the Procfile's release) and `leadstream run` may upgrade at once: one
# session-level advisory lock makes the second wait and then find the database at head.
MIGRATION_LOCK_KEY = 0x6C73_6D69_6772_6174  # "lsmigrat"


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = context.config.attributes.get("database_url") or get_settings().database_url
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        await connection.commit()  # the lock is the session's: it outlives this transaction
        try:
            await connection.run_sync(_run)
        finally:
            await connection.rollback()  # a failed migration's transaction, if any
            await connection.execute(
                text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY}
            )
            await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported")
asyncio.run(_main())
