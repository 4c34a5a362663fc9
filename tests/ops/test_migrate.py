"""`leadstream migrate` run twice at once (the Procfile's release beside `leadstream run`)."""

import asyncio
import sys
import uuid

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ops.local_services import drop_database
from ops.processes import REPO
from shared.settings import Settings

MIGRATE = "import sys; from shared.db.engine import migrate_database; migrate_database(sys.argv[1])"


async def test_two_concurrent_migrations_of_a_fresh_database_both_succeed(
    settings: Settings,
) -> None:
    fresh = make_url(settings.database_url).set(database=f"leadstream_mig_{uuid.uuid4().hex[:8]}")
    url = fresh.render_as_string(hide_password=False)
    admin = create_async_engine(
        fresh.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{fresh.database}"'))
    await admin.dispose()
    try:
        runs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", MIGRATE, url, cwd=REPO, stderr=asyncio.subprocess.PIPE
            )
            for _ in range(2)
        ]
        errors = await asyncio.wait_for(asyncio.gather(*(r.communicate() for r in runs)), 120)
        assert [run.returncode for run in runs] == [0, 0], [e.decode() for _, e in errors]
        engine = create_async_engine(url, poolclass=NullPool)
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            tables = await conn.execute(text("SELECT count(*) FROM events"))
        await engine.dispose()
        assert len(versions) == 1 and tables.scalar_one() == 0
    finally:
        await drop_database(url)
