"""`leadstream`: migrate, tenants, tokens, and `run` (the whole stack on one machine)."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import redis
import redis.asyncio as aioredis
import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from ops import processes
from ops.dead_letters import get_dead_letter, list_dead_letters, replay_dead_letters
from ops.errors import CommandError, reaching_database, reaching_redis, shown
from ops.local_services import (
    NoServiceError,
    ensure_database,
    for_mode,
    record_running,
    recorded_running,
    start_services,
    tenant_with_token,
)
from shared.auth import ALL_SCOPES, mint_token
from shared.broker.writers import KombuWriter
from shared.contract.queues import Envelope
from shared.db.engine import create_engine, migrate_database
from shared.db.tenants import ensure_tenant, find_tenant
from shared.settings import Settings, known_region

REPO = Path(__file__).resolve().parents[1]
DEMO_TENANT = "demo"
PROCESSES = ("web", "worker", "flower")  # the Procfile's long-running entries
# A replay waits this long for the broker: no HTTP client is waiting on it.
REPLAY_TIMEOUT_SECONDS = 60.0

app = typer.Typer(help="Leadstream: event ingestion for real-estate CRMs.", no_args_is_help=True)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
dlq_app = typer.Typer(
    help="Dead letters: events that could not be processed.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")


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


def _settings() -> Settings:
    """Settings, reaching the servers a running `leadstream run` uses unless URLs are set."""
    data_dir = Settings.model_fields["data_dir"].default
    data_dir = Path(os.environ.get("LEADSTREAM_DATA_DIR", data_dir))
    recorded = {
        name: url
        for name, url in recorded_running(data_dir).items()
        if f"LEADSTREAM_{name.upper()}" not in os.environ
    }
    return Settings(**recorded)


def _engine(database_url: str) -> AsyncEngine:
    """With the lock and statement timeouts of every other engine: a replay must not wait on a
    worker's lock for ever. A command needs one connection."""
    return create_engine(Settings(database_url=database_url), pool_size=1)


async def _ensure_tenant(database_url: str, name: str, region: str) -> str:
    engine = _engine(database_url)
    try:
        async with engine.begin() as conn:
            return str(await ensure_tenant(conn, name=name, default_region=region))
    finally:
        await engine.dispose()


async def _find_tenant(database_url: str, name: str) -> str | None:
    engine = _engine(database_url)
    try:
        async with engine.connect() as conn:
            found = await find_tenant(conn, name=name)
    finally:
        await engine.dispose()
    return str(found) if found else None


@app.command()
def migrate() -> None:
    """Create the database if it is missing and apply the migrations (idempotent)."""
    url = _settings().database_url
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
    settings = _settings()
    try:
        chosen = known_region(region or settings.default_phone_region)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    with reaching_database(settings.database_url):
        tenant_id = asyncio.run(_ensure_tenant(settings.database_url, name, chosen))
    typer.echo(tenant_id)


@app.command()
def token(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    scope: Annotated[list[str] | None, typer.Option(help="Repeat for several.")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 30 * 24 * 3600,
) -> None:
    """Print a Bearer token (JWT) for a tenant."""
    settings = _settings()
    if not 0 < ttl <= settings.token_max_ttl_seconds:
        raise CommandError(
            f"--ttl must be 1 to {settings.token_max_ttl_seconds} seconds"
            " (the cap is LEADSTREAM_TOKEN_MAX_TTL_SECONDS)"
        )
    with reaching_database(settings.database_url):
        tenant_id = asyncio.run(_find_tenant(settings.database_url, tenant))
    if tenant_id is None:
        raise CommandError(f"no tenant named {tenant!r}: create it with `leadstream tenant create`")
    scopes = tuple(scope) if scope else ALL_SCOPES
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown:
        typer.echo(f"unknown scopes {sorted(unknown)}; known: {list(ALL_SCOPES)}", err=True)
        raise typer.Exit(2)
    typer.echo(mint_token(settings, tenant_id=UUID(tenant_id), scopes=scopes, ttl_seconds=ttl))


async def _with_connection(database_url: str, work: Any, *, commit: bool = False) -> Any:
    engine = _engine(database_url)
    try:
        with reaching_database(database_url):
            async with engine.begin() if commit else engine.connect() as conn:
                return await work(conn)
    finally:
        await engine.dispose()


Since = Annotated[
    datetime | None, typer.Option(help="Only those that failed at or after this time (ISO 8601).")
]
Reason = Annotated[str | None, typer.Option(help="Only this reason, e.g. person_not_found.")]


@dlq_app.command("list")
def dlq_list(reason: Reason = None, since: Since = None, limit: int = 100) -> None:
    """List dead letters not yet replayed, newest first."""
    rows = asyncio.run(
        _with_connection(
            _settings().database_url,
            lambda conn: list_dead_letters(conn, reason=reason, since=since, limit=limit),
        )
    )
    for row in rows:
        detail = row.problem.get("detail", "")
        typer.echo(f"{row.event_id}  {row.failed_at:%Y-%m-%d %H:%M:%S}  {row.reason:<22} {detail}")
    typer.echo(f"{len(rows)} dead letter(s)", err=True)


@dlq_app.command("show")
def dlq_show(event_id: UUID) -> None:
    """Print one dead letter: its problem and the envelope as queued."""
    row = asyncio.run(
        _with_connection(_settings().database_url, lambda conn: get_dead_letter(conn, event_id))
    )
    if row is None:
        typer.echo(f"no dead letter for {event_id}", err=True)
        raise typer.Exit(1)
    typer.echo(
        json.dumps(
            {
                "eventId": str(row.event_id),
                "tenantId": str(row.tenant_id),
                "reason": row.reason,
                "failedAt": row.failed_at.isoformat(),
                "replayedAt": row.replayed_at.isoformat() if row.replayed_at else None,
                "problem": row.problem,
                "envelope": row.envelope,
            },
            indent=2,
        )
    )


@dlq_app.command("replay")
def dlq_replay(
    event_ids: Annotated[list[UUID] | None, typer.Argument(help="Only these events.")] = None,
    reason: Reason = None,
    since: Since = None,
) -> None:
    """Queue dead letters again (after fixing their cause); they are processed like new."""
    settings = _settings()
    with reaching_redis(settings.redis_url):
        replayed = asyncio.run(
            _replay(settings, reason=reason, since=since, event_ids=event_ids or [])
        )
    for event_id in replayed:
        typer.echo(event_id)
    typer.echo(f"{len(replayed)} event(s) queued again", err=True)


async def _replay(
    settings: Settings, *, reason: str | None, since: datetime | None, event_ids: list[UUID]
) -> list[UUID]:
    client = aioredis.Redis.from_url(settings.redis_url)
    writer = KombuWriter(
        client,
        settings.celery_broker_url,
        marker_ttl=settings.queued_marker_ttl_seconds,
        key_ttl=settings.idempotency_ttl_seconds,
        max_events_per_message=settings.enqueue_max_events_per_message,
        connect_timeout=REPLAY_TIMEOUT_SECONDS,
    )

    async def publish(by_queue: dict[str, list[Envelope]]) -> None:
        await writer.write(by_queue, REPLAY_TIMEOUT_SECONDS)

    try:
        replayed: list[UUID] = await _with_connection(
            settings.database_url,
            lambda conn: replay_dead_letters(
                conn, publish, reason=reason, since=since, event_ids=event_ids
            ),
            commit=True,
        )
    finally:
        await writer.close()
        await client.aclose()
    return replayed


async def _demo_tenant(settings: Settings) -> tuple[UUID, str]:
    engine = _engine(settings.database_url)
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
            f"API {base} (docs {base}/docs), Flower http://127.0.0.1:{settings.flower_port}\n"
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


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
