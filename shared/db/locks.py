"""Transaction-level advisory locks named by strings, for rows that may not exist yet."""

import hashlib
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# unnest keeps the array's order, so the locks are taken in the sorted order given.
_LOCK_STATEMENT = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")


def lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def event_lock_name(event_id: object) -> str:
    """Held by whoever decides an event's fate: the worker, or a dead-letter replay."""
    return f"ev|{event_id}"


async def lock_all(conn: AsyncConnection, names: Iterable[str]) -> None:
    """Lock every name until the transaction ends, in one global (sorted) order: no deadlocks."""
    keys = sorted({lock_key(n) for n in names})
    if keys:
        await conn.execute(_LOCK_STATEMENT, {"keys": keys})
