"""A tenant per test: tests share one database without seeing each other's rows."""

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from ops.local_services import tenant_with_token
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
    tenant_id, token = await tenant_with_token(
        engine, settings, name=name, region=region, ttl_seconds=3600
    )
    return Tenant(tenant_id, name, token)
