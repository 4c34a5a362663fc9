"""`leadstream source create/list/rotate/revoke` as an operator runs them, on real PostgreSQL."""

import json
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.sources import ID_SHAPE, find_source
from shared.settings import Settings
from tests.ops.test_cli_errors import leadstream, one_line
from tests.support.tenants import Tenant


async def test_create_list_rotate_revoke(
    settings: Settings, engine: AsyncEngine, tenant: Tenant, tmp_path: Path
) -> None:
    env = {"LEADSTREAM_DATABASE_URL": settings.database_url, "LEADSTREAM_DATA_DIR": str(tmp_path)}
    created = leadstream(
        "source", "create", "--tenant", tenant.name, "--name", "zapier", "--rate", "5", **env
    )
    assert created.returncode == 0, created.stderr
    printed = json.loads(created.stdout.strip().splitlines()[-1])
    assert set(printed) == {"id", "secret"} and ID_SHAPE.fullmatch(printed["id"])
    async with engine.connect() as conn:
        source = await find_source(conn, printed["id"])
    assert source is not None and source.tenant_id == tenant.id and source.name == "zapier"
    assert (source.secret, source.rate_per_second) == (printed["secret"], 5.0)

    duplicate = leadstream("source", "create", "--tenant", tenant.name, "--name", "zapier", **env)
    one_line(duplicate, "already has a source named 'zapier'")

    rotated = leadstream("source", "rotate", printed["id"], "--overlap-hours", "2", **env)
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout.strip().splitlines()[-1])
    assert new["id"] == printed["id"] and new["secret"] != printed["secret"]
    async with engine.connect() as conn:
        source = await find_source(conn, printed["id"])
    assert source is not None and source.previous_secret == printed["secret"]
    assert source.previous_expires_at is not None
    assert source.previous_expires_at.isoformat() == new["previousValidUntil"]

    # A second rotation while the first one's overlap runs would cut that overlap short.
    again = leadstream("source", "rotate", printed["id"], **env)
    one_line(again, "verifies until", "--force")
    forced = leadstream("source", "rotate", printed["id"], "--force", "--overlap-hours", "2", **env)
    assert forced.returncode == 0, forced.stderr
    newest = json.loads(forced.stdout.strip().splitlines()[-1])
    async with engine.connect() as conn:
        source = await find_source(conn, printed["id"])
    assert source is not None and source.previous_secret == new["secret"]
    assert source.secret == newest["secret"]
    new = newest

    listed = leadstream("source", "list", "--tenant", tenant.name, **env)
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert line.split()[:3] == [printed["id"], tenant.name, "zapier"]
    assert "previous secret until" in line and "rate=5/s" in line
    assert printed["secret"] not in listed.stdout and new["secret"] not in listed.stdout

    revoked = leadstream("source", "revoke", printed["id"], **env)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in leadstream("source", "list", "--tenant", tenant.name, **env).stdout
    missing = leadstream("source", "rotate", printed["id"], **env)
    one_line(missing, "no active source")
    unknown = leadstream("source", "create", "--tenant", "nobody", "--name", "x", **env)
    one_line(unknown, "no tenant named 'nobody'")
