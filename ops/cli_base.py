"""What the `leadstream` commands share: settings, a command's engine and connection, a
tenant by name."""

import os
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from ops.errors import reaching_database
from ops.local_services import recorded_running
from shared.db.engine import create_engine
from shared.db.tenants import find_tenant_status
from shared.settings import Settings


def settings_from_env() -> Settings:
    """Settings, reaching the servers a running `leadstream run` uses unless URLs are set."""
    data_dir = Settings.model_fields["data_dir"].default
    data_dir = Path(os.environ.get("LEADSTREAM_DATA_DIR", data_dir))
    recorded = {
        name: url
        for name, url in recorded_running(data_dir).items()
        if f"LEADSTREAM_{name.upper()}" not in os.environ
    }
    return Settings(**recorded)


def command_engine(database_url: str) -> AsyncEngine:
    """With the lock and statement timeouts of every other engine: a replay must not wait on a
    worker's lock for ever. A command needs one connection."""
    return create_engine(Settings(database_url=database_url), pool_size=1)


async def tenant_id_of(conn: Any, name: str) -> UUID | None:
    status = await find_tenant_status(conn, name=name)
    return status.id if status else None


async def with_connection(database_url: str, work: Any, *, commit: bool = False) -> Any:
    engine = command_engine(database_url)
    try:
        with reaching_database(database_url):
            async with engine.begin() if commit else engine.connect() as conn:
                return await work(conn)
    finally:
        await engine.dispose()
