"""`leadstream`: migrate, tenants, tokens, and `run` (the whole stack on one machine)."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

from shared.auth import ALL_SCOPES, mint_token
from shared.services import start_services
from shared.settings import Settings
from shared.tenants import ensure_tenant, find_tenant

REPO = Path(__file__).resolve().parents[1]
DEMO_TENANT = "demo"

app = typer.Typer(help="Leadstream: event ingestion for real-estate CRMs.", no_args_is_help=True)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")


def migrate_database(database_url: str) -> None:
    config = Config(str(REPO / "alembic.ini"))
    config.set_main_option("script_location", str(REPO / "migrations"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


async def _ensure_tenant(database_url: str, name: str, region: str) -> str:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            return str(await ensure_tenant(conn, name=name, default_region=region))
    finally:
        await engine.dispose()


async def _find_tenant(database_url: str, name: str) -> str | None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            found = await find_tenant(conn, name=name)
    finally:
        await engine.dispose()
    return str(found) if found else None


@app.command()
def migrate() -> None:
    """Apply the database migrations (idempotent)."""
    migrate_database(Settings().database_url)
    typer.echo("migrations: at head")


@tenant_app.command("create")
def tenant_create(
    name: str,
    region: Annotated[str, typer.Option(help="Default phone region (ISO 3166 alpha-2).")] = "",
) -> None:
    """Create a tenant (or print the id of the existing one)."""
    settings = Settings()
    tenant_id = asyncio.run(
        _ensure_tenant(settings.database_url, name, region or settings.default_phone_region)
    )
    typer.echo(tenant_id)


@app.command()
def token(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    scope: Annotated[list[str] | None, typer.Option(help="Repeat for several.")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 30 * 24 * 3600,
) -> None:
    """Print a Bearer token (JWT) for a tenant."""
    settings = Settings()
    tenant_id = asyncio.run(_find_tenant(settings.database_url, tenant))
    if tenant_id is None:
        typer.echo(
            f"no tenant named {tenant!r}; create it with `leadstream tenant create`", err=True
        )
        raise typer.Exit(1)
    scopes = tuple(scope) if scope else ALL_SCOPES
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown:
        typer.echo(f"unknown scopes {sorted(unknown)}; known: {list(ALL_SCOPES)}", err=True)
        raise typer.Exit(2)
    typer.echo(mint_token(settings, tenant_id=UUID(tenant_id), scopes=scopes, ttl_seconds=ttl))


@app.command()
def run(
    data_dir: Annotated[Path, typer.Option(help="Where embedded servers keep data.")] = REPO
    / ".data",
) -> None:
    """Start everything: database and Redis (found or embedded), migrations, API, worker, Flower."""
    services = start_services(
        data_dir=data_dir,
        database_url=os.environ.get("LEADSTREAM_DATABASE_URL"),
        redis_url=os.environ.get("LEADSTREAM_REDIS_URL"),
    )
    try:
        env = {
            **os.environ,
            "LEADSTREAM_DATABASE_URL": services.database_url,
            "LEADSTREAM_REDIS_URL": services.redis_url,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        os.environ.update(env)
        settings = Settings()
        migrate_database(settings.database_url)
        tenant_id = asyncio.run(
            _ensure_tenant(settings.database_url, DEMO_TENANT, settings.default_phone_region)
        )
        demo_token = mint_token(
            settings, tenant_id=UUID(tenant_id), scopes=ALL_SCOPES, ttl_seconds=7 * 24 * 3600
        )
        base = f"http://{settings.api_host}:{settings.api_port}"
        typer.echo(
            f"\nPostgreSQL: {services.database_origin}, Redis: {services.redis_origin}\n"
            f"API {base} (docs {base}/docs), Flower http://127.0.0.1:{settings.flower_port}\n"
            f"Token for tenant 'demo' (7 days):\n\n  export TOKEN={demo_token}\n"
        )
        honcho = subprocess.Popen(  # noqa: S603 - our own interpreter and Procfile
            [
                sys.executable,
                "-m",
                "honcho",
                "-f",
                str(REPO / "Procfile"),
                "start",
                "web",
                "worker",
                "flower",
            ],
            env=env,
            cwd=REPO,
        )
        signal.signal(signal.SIGTERM, lambda *_: honcho.terminate())
        try:
            raise typer.Exit(honcho.wait())
        except KeyboardInterrupt:
            honcho.terminate()  # Ctrl-C is how `make run` is meant to end
            honcho.wait()
            raise typer.Exit(0) from None
    finally:
        services.close()
