"""Signed-webhook sources: created, rotated and revoked by the CLI, found by the API's door.

A source's secret signs its requests (`ingest_api.sources.webhooks`). A rotation makes a new
secret and keeps the old one valid for an overlap, so a sender can switch without a gap.
"""

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Row, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db.tables import sources_t, tenants_t

ID_PREFIX = "src_"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix that says what the value is, no secret)
# src_ and 22 URL-safe characters (128 random bits): checked before any lookup, so a sender of
# made-up ids costs no query.
ID_SHAPE = re.compile(r"src_[A-Za-z0-9_-]{22}")


@dataclass(frozen=True)
class Source:
    id: str
    tenant_id: UUID
    name: str
    secret: str
    previous_secret: str | None
    previous_expires_at: datetime | None
    rate_per_second: float | None
    rate_burst: int | None
    created_at: datetime
    revoked_at: datetime | None
    # A disabled tenant's sources write nothing, like its tokens and site keys.
    tenant_active: bool = True

    def secrets_valid_at(self, now: datetime) -> list[str]:
        """The secrets a signature may be made with at `now`: the current one, and the one it
        replaced until its overlap ends."""
        valid = [self.secret]
        expires = self.previous_expires_at
        if self.previous_secret is not None and expires is not None and now < expires:
            valid.append(self.previous_secret)
        return valid


def _source(row: Row[Any], *, tenant_active: bool = True) -> Source:
    return Source(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        secret=row.secret,
        previous_secret=row.previous_secret,
        previous_expires_at=row.previous_expires_at,
        rate_per_second=row.rate_per_second,
        rate_burst=row.rate_burst,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        tenant_active=tenant_active,
    )


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


async def create_source(
    conn: AsyncConnection,
    *,
    tenant_id: UUID,
    name: str,
    rate_per_second: float | None = None,
    rate_burst: int | None = None,
) -> Source:
    """A new source and its first secret; ValueError if the tenant already has one so named."""
    row = (
        await conn.execute(
            insert(sources_t)
            .values(
                id=ID_PREFIX + secrets.token_urlsafe(16),
                tenant_id=tenant_id,
                name=name,
                secret=_new_secret(),
                rate_per_second=rate_per_second,
                rate_burst=rate_burst,
            )
            # Not a check before the insert: two concurrent creations would both pass it.
            .on_conflict_do_nothing(index_elements=["tenant_id", "name"])
            .returning(*sources_t.c)
        )
    ).one_or_none()
    if row is None:
        raise ValueError(f"the tenant already has a source named {name!r}")
    return _source(row)


async def find_source(conn: AsyncConnection, source_id: str) -> Source | None:
    """The source, revoked or not, and whether its tenant is active; None if it never existed."""
    row = (
        await conn.execute(
            select(sources_t, tenants_t.c.active)
            .join(tenants_t, tenants_t.c.id == sources_t.c.tenant_id)
            .where(sources_t.c.id == source_id)
        )
    ).one_or_none()
    return _source(row, tenant_active=row.active) if row is not None else None


async def list_sources(conn: AsyncConnection, *, tenant_id: UUID | None = None) -> list[Source]:
    query = select(sources_t).order_by(sources_t.c.created_at, sources_t.c.id)
    if tenant_id is not None:
        query = query.where(sources_t.c.tenant_id == tenant_id)
    return [_source(row) for row in await conn.execute(query)]


class OverlapRunningError(Exception):
    """The secret rotated out last time still verifies: rotating again would end it early."""


async def rotate_source(
    conn: AsyncConnection, source_id: str, *, overlap: timedelta, force: bool = False
) -> Source | None:
    """A new secret for an active source; the current one stays valid for `overlap`. None if
    there is no such active source; OverlapRunningError while the previous rotation's overlap
    runs, unless `force` (which ends it now: a sender still on that secret is refused)."""
    active = [sources_t.c.id == source_id, sources_t.c.revoked_at.is_(None)]
    expires = sources_t.c.previous_expires_at
    ended = [or_(expires.is_(None), expires <= func.now())] if not force else []
    row = (
        await conn.execute(
            update(sources_t)
            .where(*active, *ended)
            .values(
                previous_secret=sources_t.c.secret,
                previous_expires_at=func.now() + overlap,
                secret=_new_secret(),
            )
            .returning(*sources_t.c)
        )
    ).one_or_none()
    if row is not None:
        return _source(row)
    source = await find_source(conn, source_id)
    if source is None or source.revoked_at is not None:
        return None
    raise OverlapRunningError(source.previous_expires_at)


async def revoke_source(conn: AsyncConnection, source_id: str) -> bool:
    """Revoke the source (idempotent); False if there is no such source."""
    await conn.execute(
        update(sources_t)
        .where(sources_t.c.id == source_id, sources_t.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return await find_source(conn, source_id) is not None
