"""Tenant administration used by the CLI."""

from typing import cast
from uuid import UUID

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db.tables import Tenant
from shared.ids import new_id

# DeclarativeBase types __table__ as a FromClause; it is a Table.
tenants_t = cast(Table, Tenant.__table__)


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


async def find_tenant(conn: AsyncConnection, *, name: str) -> UUID | None:
    found: UUID | None = (
        await conn.execute(select(tenants_t.c.id).where(tenants_t.c.name == name))
    ).scalar_one_or_none()
    return found


async def tenant_region(conn: AsyncConnection, tenant_id: UUID) -> str | None:
    """The tenant's default phone region, which its phone numbers are normalised with."""
    region: str | None = (
        await conn.execute(select(tenants_t.c.default_region).where(tenants_t.c.id == tenant_id))
    ).scalar_one_or_none()
    return region
