"""Transaction-level advisory locks named by strings, for rows that may not exist yet.

One builder per namespace. A name is hashed into the lock key, so its spelling is part of the
contract between versions: a worker and a replay of different versions must lock the same key.
"""

import hashlib
from collections.abc import Iterable
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# unnest keeps the array's order, so the locks are taken in the sorted order given.
_LOCK_STATEMENT = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")


def lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def email_lock(tenant_id: UUID, email: str) -> str:
    return f"{tenant_id}|e|{email}"


def phone_lock(tenant_id: UUID, phone: str) -> str:
    return f"{tenant_id}|p|{phone}"


def external_id_lock(tenant_id: UUID, external_id: str) -> str:
    return f"{tenant_id}|x|{external_id}"


def person_id_lock(tenant_id: UUID, person_id: UUID) -> str:
    return f"{tenant_id}|pi|{person_id}"


def visitor_lock(tenant_id: UUID, visitor_id: str) -> str:
    return f"{tenant_id}|v|{visitor_id}"


def company_key_lock(tenant_id: UUID, company_key: str) -> str:
    return f"{tenant_id}|c|{company_key}"


def company_id_lock(tenant_id: UUID, company_id: UUID) -> str:
    return f"{tenant_id}|ci|{company_id}"


def idempotency_lock(tenant_id: UUID, key: str) -> str:
    return f"{tenant_id}|k|{key}"


def purge_lock() -> str:
    """Held by the one worker purging expired rows; the others skip their turn."""
    return "purge"


def event_lock(event_id: UUID) -> str:
    """Held by whoever decides an event's fate: the worker, or a dead-letter replay."""
    return f"ev|{event_id}"


async def lock_all(conn: AsyncConnection, names: Iterable[str]) -> None:
    """Lock every name until the transaction ends, in one global (sorted) order: no deadlocks."""
    keys = sorted({lock_key(n) for n in names})
    if keys:
        await conn.execute(_LOCK_STATEMENT, {"keys": keys})
