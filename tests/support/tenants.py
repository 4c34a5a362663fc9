"""A tenant per test: tests share one database without seeing each other's rows."""

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.auth import ALL_SCOPES, mint_token
from shared.db.tenants import ensure_tenant
from shared.settings import Settings


@dataclass
class Tenant:
    id: uuid.UUID
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_tenant(engine: AsyncEngine, settings: Settings, *, region: str = "US") -> Tenant:
    name = f"t-{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        tenant_id = await ensure_tenant(conn, name=name, default_region=region)
    token = mint_token(settings, tenant_id=tenant_id, scopes=ALL_SCOPES, ttl_seconds=3600)
    return Tenant(tenant_id, name, token)
