"""`leadstream`: migrate, tenants, tokens, and `run` (the whole stack on one machine)."""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from uuid import UUID

import redis
import typer
from pydantic import ValidationError

from ops import processes
from ops.cli_base import command_engine, settings_from_env, with_connection
from ops.dead_letters_cli import dlq_app
from ops.errors import CommandError, reaching_database, reaching_redis, shown
from ops.keys_cli import site_app, source_app
from ops.local_services import (
    NoServiceError,
    ensure_database,
    for_mode,
    record_running,
    start_services,
    tenant_with_token,
)
from shared.auth import ALL_SCOPES, WRITE_SCOPE, mint_token
from shared.db.engine import migrate_database
from shared.db.tenants import (
    TenantStatus,
    ensure_tenant,
    find_tenant_status,
    revoke_tokens,
    set_tenant_active,
)
from shared.settings import Settings, known_region

REPO = Path(__file__).resolve().parents[1]
DEMO_TENANT = "demo"
PROCESSES = ("web", "worker", "flower")  # the Procfile's long-running entries

app = typer.Typer(help="Leadstream: event ingestion for real-estate CRMs.", no_args_is_help=True)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
token_app = typer.Typer(
    help="Print a Bearer token for a tenant (--tenant NAME; events:write only unless --scope"
    " says more), or revoke the tenant's tokens."
)
app.add_typer(token_app, name="token")
app.add_typer(dlq_app, name="dlq")
app.add_typer(site_app, name="site")
app.add_typer(source_app, name="source")


def main() -> None:
    """The `leadstream` command: errors a user can fix are one line with the fix, exit 1."""
    try:
        app()
    except CommandError as exc:
        typer.echo(f"leadstream: {exc}", err=True)
        raise SystemExit(1) from None
    except ValidationError as exc:  # settings from the environment
        problems = "; ".join(
            f"{'LEADSTREAM_' + str(e['loc'][0]).upper() + ': ' if e['loc'] else ''}"
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        typer.echo(f"leadstream: invalid setting: {problems}", err=True)
        raise SystemExit(1) from None


async def _ensure_tenant(database_url: str, name: str, region: str) -> str:
    engine = command_engine(database_url)
    try:
        async with engine.begin() as conn:
            return str(await ensure_tenant(conn, name=name, default_region=region))
    finally:
        await engine.dispose()


@app.command()
def migrate() -> None:
    """Create the database if it is missing and apply the migrations (idempotent)."""
    url = settings_from_env().database_url
    with reaching_database(url):
        asyncio.run(ensure_database(url))
        migrate_database(url)
    typer.echo("migrations: at head")


@tenant_app.command("create")
def tenant_create(
    name: str,
    region: Annotated[str, typer.Option(help="Default phone region (ISO 3166 alpha-2).")] = "",
) -> None:
    """Create a tenant (or print the id of the existing one)."""
    settings = settings_from_env()
    try:
        chosen = known_region(region or settings.default_phone_region)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    with reaching_database(settings.database_url):
        tenant_id = asyncio.run(_ensure_tenant(settings.database_url, name, chosen))
    typer.echo(tenant_id)


@tenant_app.command("disable")
def tenant_disable(name: str) -> None:
    """Refuse the tenant's tokens (within LEADSTREAM_TENANT_CACHE_SECONDS); events it had sent
    before are still processed."""
    _set_active(name, active=False)


@tenant_app.command("enable")
def tenant_enable(name: str) -> None:
    """Accept the tenant's tokens again (within LEADSTREAM_TENANT_CACHE_SECONDS)."""
    _set_active(name, active=True)


def _set_active(name: str, *, active: bool) -> None:
    settings = settings_from_env()
    found = asyncio.run(
        with_connection(
            settings.database_url,
            lambda conn: set_tenant_active(conn, name=name, active=active),
            commit=True,
        )
    )
    if found is None:
        raise CommandError(f"no tenant named {name!r}: see `leadstream tenant create`")
    state = "enabled" if active else "disabled: its tokens are refused"
    typer.echo(
        f"tenant {name!r} {state} within {settings.tenant_cache_seconds:g} s"
        " (LEADSTREAM_TENANT_CACHE_SECONDS)"
    )


@token_app.callback(invoke_without_command=True)
def token(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Tenant name.")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Repeat for several; default {WRITE_SCOPE} only (reading needs events:read)."
        ),
    ] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 30 * 24 * 3600,
) -> None:
    """Print a Bearer token (JWT) for a tenant, with only the scopes asked for."""
    if ctx.invoked_subcommand is not None:
        return
    if tenant is None:
        raise CommandError("name the tenant: `leadstream token --tenant NAME`")
    settings = settings_from_env()
    if not 0 < ttl <= settings.token_max_ttl_seconds:
        raise CommandError(
            f"--ttl must be 1 to {settings.token_max_ttl_seconds} seconds"
            " (the cap is LEADSTREAM_TOKEN_MAX_TTL_SECONDS)"
        )
    scopes = tuple(dict.fromkeys(scope)) if scope else (WRITE_SCOPE,)
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown:
        typer.echo(f"unknown scopes {sorted(unknown)}; known: {list(ALL_SCOPES)}", err=True)
        raise typer.Exit(2)
    status = _tenant_status(settings, tenant)
    if not status.active:
        raise CommandError(
            f"tenant {tenant!r} is disabled: `leadstream tenant enable {tenant}` first"
        )
    typer.echo(
        mint_token(
            settings,
            tenant_id=status.id,
            scopes=scopes,
            ttl_seconds=ttl,
            token_version=status.token_version,
        )
    )


@token_app.command("revoke")
def token_revoke(tenant: Annotated[str, typer.Option(help="Tenant name.")]) -> None:
    """Revoke every token of the tenant minted so far (within LEADSTREAM_TENANT_CACHE_SECONDS);
    tokens minted afterwards work."""
    settings = settings_from_env()
    version = asyncio.run(
        with_connection(
            settings.database_url, lambda conn: revoke_tokens(conn, name=tenant), commit=True
        )
    )
    if version is None:
        raise CommandError(f"no tenant named {tenant!r}: see `leadstream tenant create`")
    typer.echo(
        f"tenant {tenant!r}: tokens minted before now are refused within"
        f" {settings.tenant_cache_seconds:g} s (LEADSTREAM_TENANT_CACHE_SECONDS);"
        f" mint new ones with `leadstream token --tenant {tenant}`"
    )


def _tenant_status(settings: Settings, name: str) -> TenantStatus:
    found: TenantStatus | None = asyncio.run(
        with_connection(settings.database_url, lambda conn: find_tenant_status(conn, name=name))
    )
    if found is None:
        raise CommandError(f"no tenant named {name!r}: create it with `leadstream tenant create`")
    return found


async def _demo_tenant(settings: Settings) -> tuple[UUID, str]:
    engine = command_engine(settings.database_url)
    try:
        return await tenant_with_token(
            engine,
            settings,
            name=DEMO_TENANT,
            region=settings.default_phone_region,
            ttl_seconds=7 * 24 * 3600,
        )
    finally:
        await engine.dispose()


def _flower_login(settings: Settings) -> str:
    if settings.flower_basic_auth:
        return "basic auth: LEADSTREAM_FLOWER_BASIC_AUTH"
    user, _, password = settings.flower_credentials().partition(":")
    return f"user {user}, password {password}"


@app.command()
def run(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where embedded servers keep data (LEADSTREAM_DATA_DIR).")
    ] = None,
) -> None:
    """Start everything: database and Redis (found or embedded), migrations, API, worker, Flower.

    Every way of stopping it (Ctrl-C, SIGTERM, the terminal closing) stops all of it.
    """
    settings = Settings()
    data_dir = data_dir or settings.data_dir
    for name, port in (
        ("LEADSTREAM_API_PORT", settings.api_port),
        ("LEADSTREAM_FLOWER_PORT", settings.flower_port),
    ):
        if not processes.port_is_free(settings.api_host, port):
            raise CommandError(
                f"port {port} is in use (another `make run`?): stop that, or set {name}"
            )
    try:
        services = start_services(
            data_dir=data_dir,
            database_url=os.environ.get("LEADSTREAM_DATABASE_URL"),
            redis_url=os.environ.get("LEADSTREAM_REDIS_URL"),
            **for_mode(settings.services),
        )
    except NoServiceError as exc:
        raise CommandError(str(exc)) from None
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(services.close)
        env = {
            **os.environ,
            "LEADSTREAM_DATABASE_URL": services.database_url,
            "LEADSTREAM_REDIS_URL": services.redis_url,
            "LEADSTREAM_DATA_DIR": str(data_dir),
            "PATH": f"{processes.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        os.environ.update(env)
        settings = Settings()
        with reaching_redis(settings.redis_url):
            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
        with reaching_database(settings.database_url):
            asyncio.run(ensure_database(settings.database_url))
            migrate_database(settings.database_url)
            _, demo_token = asyncio.run(_demo_tenant(settings))
        recorded = record_running(data_dir, services)
        cleanup.callback(recorded.unlink, missing_ok=True)
        base = f"http://{settings.api_host}:{settings.api_port}"
        typer.echo(
            f"\nPostgreSQL ({services.database_origin}): {shown(services.database_url)}\n"
            f"Redis ({services.redis_origin}): {shown(services.redis_url)}\n"
            f"(recorded in {recorded} for the other `leadstream` commands)\n"
            f"API {base} (docs {base}/docs), Flower http://127.0.0.1:{settings.flower_port}"
            f" ({_flower_login(settings)})\n"
            f"Token for tenant 'demo' (7 days):\n\n  export TOKEN={demo_token}\n"
        )
        # The Procfile is rendered from ops.processes (a test keeps them equal): run it as is.
        # In a session of its own, so that a closing terminal's SIGHUP reaches only this
        # process (a Celery worker would take it as "restart"), which then stops them all.
        honcho = subprocess.Popen(  # noqa: S603 - our own interpreter and Procfile
            [sys.executable, "-m", "honcho", "-f", str(REPO / "Procfile"), "start", *PROCESSES],
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        cleanup.callback(processes.stop, honcho)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how `make run` is meant to end
            code = honcho.wait()
            raise typer.Exit(code)


@app.command()
def flower(
    port: Annotated[int, typer.Option(help="Port (LEADSTREAM_FLOWER_PORT).")] = 5555,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run Flower behind basic auth: LEADSTREAM_FLOWER_BASIC_AUTH, else (outside prod) the
    generated credentials `leadstream run` prints."""
    try:
        credentials = settings_from_env().flower_credentials()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    argv = processes.celery_flower_argv(address=address, port=port)
    program = shutil.which(argv[0], path=str(processes.BIN)) or argv[0]
    # Replaced, not wrapped: signals from honcho or the tests reach Flower itself.
    os.execve(program, argv, {**os.environ, "FLOWER_BASIC_AUTH": credentials})  # noqa: S606 - our own celery


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
