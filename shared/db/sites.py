"""Site keys: created, listed and revoked by the CLI, found by the API's browser doors."""

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast
from urllib.parse import urlsplit
from uuid import UUID

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db.tables import sites_t, tenants_t

IpPolicy = Literal["keep", "truncate", "drop"]
IP_POLICIES: tuple[IpPolicy, ...] = ("keep", "truncate", "drop")
KEY_PREFIX = "pk_"
# pk_ and 32 URL-safe characters (192 random bits): a shape checked before any lookup, so a
# sender of garbage keys costs no query.
KEY_SHAPE = re.compile(r"pk_[A-Za-z0-9_-]{32}")


@dataclass(frozen=True)
class Site:
    key: str
    tenant_id: UUID
    origins: frozenset[str]
    ip_policy: IpPolicy
    rate_per_second: float | None
    rate_burst: int | None
    created_at: datetime
    revoked_at: datetime | None
    # A disabled tenant's keys write nothing (`leadstream tenant disable`), like its tokens.
    tenant_active: bool = True


def new_site_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def normalize_origin(value: str) -> str:
    """`https://Agent.Example/` → `https://agent.example`, as a browser's `Origin` header says
    it; ValueError for anything that is not an http(s) origin."""
    parts = urlsplit(value.strip())
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{value!r} is not an origin: write it as https://host[:port]")
    if parts.path not in {"", "/"} or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{value!r} is not an origin: no path, query or user in an origin")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    default = {"http": 80, "https": 443}[parts.scheme.lower()]
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port and port != default else "")


def _site(row: Row[Any], *, tenant_active: bool = True) -> Site:
    return Site(
        key=row.key,
        tenant_id=row.tenant_id,
        origins=frozenset(row.origins),
        ip_policy=cast(IpPolicy, row.ip_policy),
        rate_per_second=row.rate_per_second,
        rate_burst=row.rate_burst,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        tenant_active=tenant_active,
    )


async def create_site(
    conn: AsyncConnection,
    *,
    tenant_id: UUID,
    origins: list[str],
    ip_policy: IpPolicy = "truncate",
    rate_per_second: float | None = None,
    rate_burst: int | None = None,
) -> Site:
    """A new key for the tenant's pages on `origins` (normalised; ValueError if one is not)."""
    normalized = sorted({normalize_origin(origin) for origin in origins})
    row = (
        await conn.execute(
            sites_t.insert()
            .values(
                key=new_site_key(),
                tenant_id=tenant_id,
                origins=normalized,
                ip_policy=ip_policy,
                rate_per_second=rate_per_second,
                rate_burst=rate_burst,
            )
            .returning(*sites_t.c)
        )
    ).one()
    return _site(row)


async def find_site(conn: AsyncConnection, key: str) -> Site | None:
    """The site of `key`, revoked or not, and whether its tenant is active; None for a key that
    never existed."""
    row = (
        await conn.execute(
            select(sites_t, tenants_t.c.active)
            .join(tenants_t, tenants_t.c.id == sites_t.c.tenant_id)
            .where(sites_t.c.key == key)
        )
    ).one_or_none()
    return _site(row, tenant_active=row.active) if row is not None else None


async def list_sites(conn: AsyncConnection, *, tenant_id: UUID | None = None) -> list[Site]:
    query = select(sites_t).order_by(sites_t.c.created_at, sites_t.c.key)
    if tenant_id is not None:
        query = query.where(sites_t.c.tenant_id == tenant_id)
    return [_site(row) for row in await conn.execute(query)]


async def revoke_site(conn: AsyncConnection, key: str) -> bool:
    """Revoke `key` (idempotent); False if there is no such key."""
    await conn.execute(
        update(sites_t)
        .where(sites_t.c.key == key, sites_t.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return await find_site(conn, key) is not None


async def tenant_names(conn: AsyncConnection, tenant_ids: set[UUID]) -> dict[UUID, str]:
    rows = await conn.execute(
        select(tenants_t.c.id, tenants_t.c.name).where(tenants_t.c.id.in_(tenant_ids))
    )
    return {row.id: row.name for row in rows}
