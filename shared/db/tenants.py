"""Tenants: created, found, disabled and their tokens revoked by the CLI; their phone region
read by the API and the worker, their status by the API."""

import time
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db.tables import tenants_t
from shared.ids import new_id

_REGION_TTL = 60.0
_regions: dict[UUID, tuple[str, float]] = {}


async def ensure_tenant(conn: AsyncConnection, *, name: str, default_region: str) -> UUID:
    """The id of the tenant called `name`, created if missing (safe to run concurrently)."""
    await conn.execute(
        insert(tenants_t)
        .values(id=new_id(), name=name, default_region=default_region.upper())
        .on_conflict_do_nothing(index_elements=[tenants_t.c.name])
    )
    tenant_id: UUID = (
        await conn.execute(select(tenants_t.c.id).where(tenants_t.c.name == name))
    ).scalar_one()
    return tenant_id


@dataclass(frozen=True)
class TenantStatus:
    """What decides whether a tenant's token is still good."""

    id: UUID
    active: bool
    token_version: int


_STATUS_COLUMNS = (tenants_t.c.id, tenants_t.c.active, tenants_t.c.token_version)


async def tenant_status(conn: AsyncConnection, tenant_id: UUID) -> TenantStatus | None:
    """The tenant's status, read now (the API caches it); None if there is no such tenant."""
    row = (
        await conn.execute(select(*_STATUS_COLUMNS).where(tenants_t.c.id == tenant_id))
    ).one_or_none()
    return TenantStatus(row.id, row.active, row.token_version) if row else None


async def find_tenant_status(conn: AsyncConnection, *, name: str) -> TenantStatus | None:
    """The status of the tenant called `name` (its id among it); None if there is none."""
    row = (
        await conn.execute(select(*_STATUS_COLUMNS).where(tenants_t.c.name == name))
    ).one_or_none()
    return TenantStatus(row.id, row.active, row.token_version) if row else None


async def set_tenant_active(conn: AsyncConnection, *, name: str, active: bool) -> UUID | None:
    """Enable or disable the tenant called `name`; its id, or None if there is none."""
    found: UUID | None = (
        await conn.execute(
            update(tenants_t)
            .where(tenants_t.c.name == name)
            .values(active=active)
            .returning(tenants_t.c.id)
        )
    ).scalar_one_or_none()
    return found


async def revoke_tokens(conn: AsyncConnection, *, name: str) -> int | None:
    """Revoke every token of the tenant called `name` minted so far: its new token version, or
    None if there is no such tenant."""
    version: int | None = (
        await conn.execute(
            update(tenants_t)
            .where(tenants_t.c.name == name)
            .values(token_version=tenants_t.c.token_version + 1)
            .returning(tenants_t.c.token_version)
        )
    ).scalar_one_or_none()
    return version


async def tenant_regions(conn: AsyncConnection, tenant_ids: Iterable[UUID]) -> dict[UUID, str]:
    """Each tenant's phone region (its `default_region`), remembered for a minute.

    The one rule for both processes: a tenant's phone numbers are normalised with its own
    region, with no fallback; a tenant that does not exist is left out (its events fail with
    `tenant_not_found`, and the API finds nothing for it). Both read through this cache, so a
    region changed in the database reaches them within the same minute.
    """
    now = time.monotonic()
    wanted = set(tenant_ids)
    missing = {t for t in wanted if t not in _regions or _regions[t][1] < now}
    if missing:
        rows = await conn.execute(
            select(tenants_t.c.id, tenants_t.c.default_region).where(tenants_t.c.id.in_(missing))
        )
        found = {row.id: row.default_region for row in rows}
        for tenant in missing:
            if tenant in found:
                _regions[tenant] = (found[tenant], now + _REGION_TTL)
            else:
                _regions.pop(tenant, None)
    return {t: _regions[t][0] for t in wanted if t in _regions}


async def tenant_region(conn: AsyncConnection, tenant_id: UUID) -> str | None:
    """One tenant's phone region, by the rule of `tenant_regions`: None if there is no tenant."""
    return (await tenant_regions(conn, (tenant_id,))).get(tenant_id)
