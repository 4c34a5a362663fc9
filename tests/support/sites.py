"""Site keys for the browser doors' tests, and waiting for what they queued to be stored."""

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.sites import IpPolicy, Site, create_site
from shared.db.tables import events_t

ORIGIN = "https://agent.example"


async def make_site(
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
    *,
    origins: Sequence[str] = (ORIGIN,),
    ip_policy: IpPolicy = "truncate",
    rate: float | None = None,
    burst: int | None = None,
) -> Site:
    async with engine.begin() as conn:
        return await create_site(
            conn,
            tenant_id=tenant_id,
            origins=list(origins),
            ip_policy=ip_policy,
            rate_per_second=rate,
            rate_burst=burst,
        )


async def stored_events(
    engine: AsyncEngine, tenant_id: uuid.UUID, count: int, timeout: float = 30
) -> list[Row[Any]]:
    """The tenant's events once at least `count` are stored, oldest first (polled, bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with engine.connect() as conn:
            rows = list(
                await conn.execute(
                    select(events_t)
                    .where(events_t.c.tenant_id == tenant_id)
                    .order_by(events_t.c.occurred_at, events_t.c.id)
                )
            )
        if len(rows) >= count:
            return rows
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{len(rows)} of {count} events stored after {timeout}s")
        await asyncio.sleep(0.05)
