"""`leadstream`: migrate, tenants, tokens, and `run` (the whole stack on one machine)."""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
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
from shared.auth import ALL_SCOPES, WRITE_SCOPE, mint_token
from shared.broker.writers import KombuWriter
from shared.contract.queues import Envelope
from shared.db.engine import create_engine, migrate_database
from shared.db.sites import IP_POLICIES, Site, create_site, list_sites, revoke_site, tenant_names
from shared.db.sources import (
    OverlapRunningError,
    Source,
    create_source,
    list_sources,
    revoke_source,
    rotate_source,
)
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
# A replay waits this long for the broker: no HTTP client is waiting on it.
REPLAY_TIMEOUT_SECONDS = 60.0

app = typer.Typer(help="Leadstream: event ingestion for real-estate CRMs.", no_args_is_help=True)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
token_app = typer.Typer(
    help="Print a Bearer token for a tenant (--tenant NAME; events:write only unless --scope"
    " says more), or revoke the tenant's tokens."
)
app.add_typer(token_app, name="token")
dlq_app = typer.Typer(
    help="Dead letters: events that could not be processed.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
site_app = typer.Typer(
    help="Site keys: the public keys of the pixel and the beacon.", no_args_is_help=True
)
app.add_typer(site_app, name="site")
source_app = typer.Typer(
    help="Webhook sources: servers that post signed events to /hooks/<id>.", no_args_is_help=True
)
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
    settings = _settings()
    found = asyncio.run(
        _with_connection(
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
    settings = _settings()
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
    settings = _settings()
    version = asyncio.run(
        _with_connection(
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
        _with_connection(settings.database_url, lambda conn: find_tenant_status(conn, name=name))
    )
    if found is None:
        raise CommandError(f"no tenant named {name!r}: create it with `leadstream tenant create`")
    return found


async def _tenant_id(conn: Any, name: str) -> UUID | None:
    status = await find_tenant_status(conn, name=name)
    return status.id if status else None


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


@site_app.command("create")
def site_create(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    origin: Annotated[
        list[str], typer.Option(help="An allowed origin, https://host[:port]; repeat for several.")
    ],
    ip_policy: Annotated[
        str, typer.Option(help="What is stored of a client's address: keep, truncate or drop.")
    ] = "truncate",
    rate: Annotated[
        float | None, typer.Option(help="Requests per second (default LEADSTREAM_RATE_LIMIT_*).")
    ] = None,
    burst: Annotated[int | None, typer.Option(help="Burst allowance (requests).")] = None,
) -> None:
    """Create a site key; it is printed alone on the last line."""
    if ip_policy not in IP_POLICIES:
        raise CommandError(f"--ip-policy must be one of {', '.join(IP_POLICIES)}")
    _check_rate(rate, burst)
    settings = _settings()

    async def create(conn: Any) -> Site:
        tenant_id = await _tenant_id(conn, tenant)
        if tenant_id is None:
            raise CommandError(
                f"no tenant named {tenant!r}: create it with `leadstream tenant create`"
            )
        try:
            return await create_site(
                conn,
                tenant_id=tenant_id,
                origins=origin,
                ip_policy=ip_policy,
                rate_per_second=rate,
                rate_burst=burst,
            )
        except ValueError as exc:
            raise CommandError(f"--origin: {exc}") from None

    site: Site = asyncio.run(_with_connection(settings.database_url, create, commit=True))
    typer.echo(f"site key for tenant {tenant!r}, origins {' '.join(sorted(site.origins))}:")
    typer.echo(site.key)


@site_app.command("list")
def site_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """List site keys, oldest first: key, tenant, state, IP policy, rate, origins."""

    async def read(conn: Any) -> tuple[list[Site], dict[UUID, str]]:
        tenant_id = None
        if tenant is not None:
            tenant_id = await _tenant_id(conn, tenant)
            if tenant_id is None:
                raise CommandError(f"no tenant named {tenant!r}")
        sites = await list_sites(conn, tenant_id=tenant_id)
        return sites, await tenant_names(conn, {site.tenant_id for site in sites})

    sites, names = asyncio.run(_with_connection(_settings().database_url, read))
    for site in sites:
        state = f"revoked {site.revoked_at:%Y-%m-%d %H:%M}" if site.revoked_at else "active"
        rate = _rate_text(site.rate_per_second, site.rate_burst)
        typer.echo(
            f"{site.key}  {names.get(site.tenant_id, site.tenant_id)}  {state}  "
            f"ip={site.ip_policy}  {rate}  {' '.join(sorted(site.origins))}"
        )
    typer.echo(f"{len(sites)} site key(s)", err=True)


@site_app.command("revoke")
def site_revoke(key: str) -> None:
    """Revoke a site key: API processes refuse it within LEADSTREAM_SITE_KEY_CACHE_SECONDS."""
    found = asyncio.run(
        _with_connection(_settings().database_url, lambda conn: revoke_site(conn, key), commit=True)
    )
    if not found:
        raise CommandError(f"no site key {key!r}")
    typer.echo(f"revoked {key}")


def _rate_text(rate: float | None, burst: int | None) -> str:
    return (
        f"rate={'default' if rate is None else f'{rate:g}/s'}"
        f" burst={'default' if burst is None else burst}"
    )


def _check_rate(rate: float | None, burst: int | None) -> None:
    if (rate is not None and rate <= 0) or (burst is not None and burst < 1):
        raise CommandError("--rate must be above 0 and --burst at least 1")


@source_app.command("create")
def source_create(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    name: Annotated[str, typer.Option(help="What sends it, e.g. zapier; unique per tenant.")],
    rate: Annotated[
        float | None, typer.Option(help="Requests per second (default LEADSTREAM_RATE_LIMIT_*).")
    ] = None,
    burst: Annotated[int | None, typer.Option(help="Burst allowance (requests).")] = None,
) -> None:
    """Create a webhook source; its {"id", "secret"} is printed as JSON on the last line."""
    _check_rate(rate, burst)
    if not 0 < len(name) <= 255:
        raise CommandError("--name must be 1 to 255 characters")

    async def create(conn: Any) -> Source:
        tenant_id = await _tenant_id(conn, tenant)
        if tenant_id is None:
            raise CommandError(
                f"no tenant named {tenant!r}: create it with `leadstream tenant create`"
            )
        try:
            return await create_source(
                conn, tenant_id=tenant_id, name=name, rate_per_second=rate, rate_burst=burst
            )
        except ValueError as exc:
            raise CommandError(f"--name: {exc}: pick another name") from None

    source: Source = asyncio.run(_with_connection(_settings().database_url, create, commit=True))
    typer.echo(f"webhook source {name!r} of tenant {tenant!r}: POST /hooks/{source.id}")
    typer.echo(json.dumps({"id": source.id, "secret": source.secret}))


@source_app.command("list")
def source_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's sources.")] = None,
) -> None:
    """List webhook sources, oldest first: id, tenant, name, state, rate (never the secret)."""

    async def read(conn: Any) -> tuple[list[Source], dict[UUID, str]]:
        tenant_id = None
        if tenant is not None:
            tenant_id = await _tenant_id(conn, tenant)
            if tenant_id is None:
                raise CommandError(f"no tenant named {tenant!r}")
        sources = await list_sources(conn, tenant_id=tenant_id)
        return sources, await tenant_names(conn, {source.tenant_id for source in sources})

    sources, names = asyncio.run(_with_connection(_settings().database_url, read))
    for source in sources:
        state = f"revoked {source.revoked_at:%Y-%m-%d %H:%M}" if source.revoked_at else "active"
        previous = source.previous_expires_at
        if source.revoked_at is None and previous is not None and previous > datetime.now(UTC):
            state += f", previous secret until {previous:%Y-%m-%d %H:%M}"
        rate = _rate_text(source.rate_per_second, source.rate_burst)
        typer.echo(
            f"{source.id}  {names.get(source.tenant_id, source.tenant_id)}  {source.name}"
            f"  {state}  {rate}"
        )
    typer.echo(f"{len(sources)} source(s)", err=True)


@source_app.command("rotate")
def source_rotate(
    source_id: Annotated[str, typer.Argument(help="The source's id (src_...).")],
    overlap_hours: Annotated[
        float, typer.Option(help="How long the current secret stays valid.")
    ] = 24.0,
    force: Annotated[
        bool, typer.Option(help="Rotate even while the last rotation's overlap runs.")
    ] = False,
) -> None:
    """A new secret, printed as {"id", "secret", "previousValidUntil"} JSON on the last line;
    the current one keeps working for --overlap-hours."""
    if not 0 <= overlap_hours <= 24 * 30:
        raise CommandError("--overlap-hours must be 0 to 720")

    async def rotate(conn: Any) -> Source | None:
        try:
            return await rotate_source(
                conn, source_id, overlap=timedelta(hours=overlap_hours), force=force
            )
        except OverlapRunningError as exc:
            raise CommandError(
                f"the secret rotated out last time verifies until {exc.args[0]:%Y-%m-%d %H:%M}:"
                " rotating now would end that early; wait, or pass --force"
            ) from None

    source: Source | None = asyncio.run(
        _with_connection(_settings().database_url, rotate, commit=True)
    )
    if source is None or source.previous_expires_at is None:
        raise CommandError(f"no active source {source_id!r}: see `leadstream source list`")
    typer.echo(
        json.dumps(
            {
                "id": source.id,
                "secret": source.secret,
                "previousValidUntil": source.previous_expires_at.isoformat(),
            }
        )
    )


@source_app.command("revoke")
def source_revoke(source_id: str) -> None:
    """Revoke a source: API processes refuse it within LEADSTREAM_SITE_KEY_CACHE_SECONDS."""
    found = asyncio.run(
        _with_connection(
            _settings().database_url, lambda conn: revoke_source(conn, source_id), commit=True
        )
    )
    if not found:
        raise CommandError(f"no source {source_id!r}")
    typer.echo(f"revoked {source_id}")


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
        credentials = _settings().flower_credentials()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    argv = processes.celery_flower_argv(address=address, port=port)
    program = shutil.which(argv[0], path=str(processes.BIN)) or argv[0]
    # Replaced, not wrapped: signals from honcho or the tests reach Flower itself.
    os.execve(program, argv, {**os.environ, "FLOWER_BASIC_AUTH": credentials})  # noqa: S606 - our own celery


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
