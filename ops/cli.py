"""`leadstream`: migrate, tenants, tokens, and `run` (the whole stack on one machine)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import redis.asyncio as aioredis
import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from ops import processes
from ops.dead_letters import get_dead_letter, list_dead_letters, replay_dead_letters
from ops.local_services import start_services, tenant_with_token
from shared.auth import ALL_SCOPES, mint_token
from shared.broker.writers import KombuWriter
from shared.contract.queues import Envelope
from shared.db.engine import create_engine, migrate_database
from shared.db.tenants import ensure_tenant, find_tenant
from shared.settings import Settings

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


async def _with_connection(database_url: str, work: Any, *, commit: bool = False) -> Any:
    engine = _engine(database_url)
    try:
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
            Settings().database_url,
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
        _with_connection(Settings().database_url, lambda conn: get_dead_letter(conn, event_id))
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
    settings = Settings()
    replayed = asyncio.run(_replay(settings, reason=reason, since=since, event_ids=event_ids or []))
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
        max_events_per_message=settings.enqueue_max_events_per_message,
        connect_timeout=REPLAY_TIMEOUT_SECONDS,
    )

    async def publish(by_queue: dict[str, list[Envelope]]) -> None:
        await writer.write(by_queue, time.time() + REPLAY_TIMEOUT_SECONDS)

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
            "PATH": f"{processes.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        os.environ.update(env)
        settings = Settings()
        migrate_database(settings.database_url)
        _, demo_token = asyncio.run(_demo_tenant(settings))
        base = f"http://{settings.api_host}:{settings.api_port}"
        typer.echo(
            f"\nPostgreSQL: {services.database_origin}, Redis: {services.redis_origin}\n"
            f"API {base} (docs {base}/docs), Flower http://127.0.0.1:{settings.flower_port}\n"
            f"Token for tenant 'demo' (7 days):\n\n  export TOKEN={demo_token}\n"
        )
        # The Procfile is rendered from ops.processes (a test keeps them equal): run it as is.
        honcho = subprocess.Popen(  # noqa: S603 - our own interpreter and Procfile
            [sys.executable, "-m", "honcho", "-f", str(REPO / "Procfile"), "start", *PROCESSES],
            env=env,
            cwd=REPO,
        )
        signal.signal(signal.SIGTERM, lambda *_: honcho.terminate())
        try:
            raise typer.Exit(honcho.wait())
        except KeyboardInterrupt:
            processes.stop(honcho)  # Ctrl-C is how `make run` is meant to end
            raise typer.Exit(0) from None
    finally:
        services.close()
