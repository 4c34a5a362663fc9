"""`leadstream site …` and `leadstream source …`: the public keys of the browser doors and the
signed-webhook sources."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import typer

from ops.cli_base import settings_from_env, tenant_id_of, with_connection
from ops.errors import CommandError
from shared.db.sites import IP_POLICIES, Site, create_site, list_sites, revoke_site, tenant_names
from shared.db.sources import (
    OverlapRunningError,
    Source,
    create_source,
    list_sources,
    revoke_source,
    rotate_source,
)

site_app = typer.Typer(
    help="Site keys: the public keys of the pixel and the beacon.", no_args_is_help=True
)
source_app = typer.Typer(
    help="Webhook sources: servers that post signed events to /hooks/<id>.", no_args_is_help=True
)


async def _tenant_filter(conn: Any, tenant: str | None) -> UUID | None:
    """The id of the tenant a list is limited to (None: every tenant); an unknown one fails."""
    if tenant is None:
        return None
    tenant_id = await tenant_id_of(conn, tenant)
    if tenant_id is None:
        raise CommandError(f"no tenant named {tenant!r}")
    return tenant_id


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
    settings = settings_from_env()

    async def create(conn: Any) -> Site:
        tenant_id = await tenant_id_of(conn, tenant)
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

    site: Site = asyncio.run(with_connection(settings.database_url, create, commit=True))
    typer.echo(f"site key for tenant {tenant!r}, origins {' '.join(sorted(site.origins))}:")
    typer.echo(site.key)


@site_app.command("list")
def site_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """List site keys, oldest first: key, tenant, state, IP policy, rate, origins."""

    async def read(conn: Any) -> tuple[list[Site], dict[UUID, str]]:
        tenant_id = await _tenant_filter(conn, tenant)
        sites = await list_sites(conn, tenant_id=tenant_id)
        return sites, await tenant_names(conn, {site.tenant_id for site in sites})

    sites, names = asyncio.run(with_connection(settings_from_env().database_url, read))
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
        with_connection(
            settings_from_env().database_url, lambda conn: revoke_site(conn, key), commit=True
        )
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
        tenant_id = await tenant_id_of(conn, tenant)
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

    source: Source = asyncio.run(
        with_connection(settings_from_env().database_url, create, commit=True)
    )
    typer.echo(f"webhook source {name!r} of tenant {tenant!r}: POST /hooks/{source.id}")
    typer.echo(json.dumps({"id": source.id, "secret": source.secret}))


@source_app.command("list")
def source_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's sources.")] = None,
) -> None:
    """List webhook sources, oldest first: id, tenant, name, state, rate (never the secret)."""

    async def read(conn: Any) -> tuple[list[Source], dict[UUID, str]]:
        tenant_id = await _tenant_filter(conn, tenant)
        sources = await list_sources(conn, tenant_id=tenant_id)
        return sources, await tenant_names(conn, {source.tenant_id for source in sources})

    sources, names = asyncio.run(with_connection(settings_from_env().database_url, read))
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
        with_connection(settings_from_env().database_url, rotate, commit=True)
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
        with_connection(
            settings_from_env().database_url,
            lambda conn: revoke_source(conn, source_id),
            commit=True,
        )
    )
    if not found:
        raise CommandError(f"no source {source_id!r}")
    typer.echo(f"revoked {source_id}")
