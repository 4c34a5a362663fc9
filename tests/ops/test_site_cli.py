"""`leadstream site create/list/revoke` as an operator runs them, on the real PostgreSQL."""

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.sites import KEY_SHAPE, find_site
from shared.settings import Settings
from tests.ops.test_cli_errors import leadstream, one_line
from tests.support.tenants import Tenant


async def test_create_list_revoke(
    settings: Settings, engine: AsyncEngine, tenant: Tenant, tmp_path: Path
) -> None:
    env = {"LEADSTREAM_DATABASE_URL": settings.database_url, "LEADSTREAM_DATA_DIR": str(tmp_path)}
    created = leadstream(
        "site",
        "create",
        "--tenant",
        tenant.name,
        "--origin",
        "https://Agent.Example/",
        "--origin",
        "http://localhost:8080",
        "--ip-policy",
        "drop",
        "--rate",
        "5",
        "--burst",
        "10",
        **env,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert KEY_SHAPE.fullmatch(key), created.stdout
    async with engine.connect() as conn:
        site = await find_site(conn, key)
    assert site is not None and site.tenant_id == tenant.id
    assert site.origins == {"https://agent.example", "http://localhost:8080"}
    assert (site.ip_policy, site.rate_per_second, site.rate_burst) == ("drop", 5.0, 10)

    second = leadstream(
        "site", "create", "--tenant", tenant.name, "--origin", "https://b.example", **env
    )
    listed = leadstream("site", "list", "--tenant", tenant.name, **env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [key, second.stdout.split()[-1]]
    assert "active" in lines[0] and "ip=drop" in lines[0] and "rate=5/s" in lines[0]
    assert "ip=truncate" in lines[1] and "rate=default" in lines[1]

    revoked = leadstream("site", "revoke", key, **env)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in leadstream("site", "list", "--tenant", tenant.name, **env).stdout
    async with engine.connect() as conn:
        site = await find_site(conn, key)
    assert site is not None and site.revoked_at is not None


def test_mistakes_are_one_line(settings: Settings, tenant: Tenant, tmp_path: Path) -> None:
    env = {"LEADSTREAM_DATABASE_URL": settings.database_url, "LEADSTREAM_DATA_DIR": str(tmp_path)}
    one_line(
        leadstream("site", "create", "--tenant", "nobody-here", "--origin", "https://a.b", **env),
        "no tenant named 'nobody-here'",
    )
    one_line(
        leadstream("site", "create", "--tenant", tenant.name, "--origin", "a.example", **env),
        "--origin",
    )
    one_line(
        leadstream(
            "site",
            "create",
            "--tenant",
            tenant.name,
            "--origin",
            "https://a.b",
            "--ip-policy",
            "hash",
            **env,
        ),
        "--ip-policy",
    )
    one_line(leadstream("site", "revoke", f"pk_{'C' * 32}", **env), "no site key")
