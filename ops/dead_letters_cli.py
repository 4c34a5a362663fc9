"""`leadstream dlq …`: list, show and replay dead letters."""

import asyncio
import json
from datetime import datetime
from typing import Annotated
from uuid import UUID

import redis.asyncio as aioredis
import typer

from ops.cli_base import settings_from_env, with_connection
from ops.dead_letters import get_dead_letter, list_dead_letters, replay_dead_letters
from ops.errors import reaching_redis
from shared.broker.writers import KombuWriter
from shared.contract.queues import Envelope
from shared.settings import Settings

# A replay waits this long for the broker: no HTTP client is waiting on it.
REPLAY_TIMEOUT_SECONDS = 60.0

dlq_app = typer.Typer(
    help="Dead letters: events that could not be processed.", no_args_is_help=True
)


Since = Annotated[
    datetime | None, typer.Option(help="Only those that failed at or after this time (ISO 8601).")
]
Reason = Annotated[str | None, typer.Option(help="Only this reason, e.g. person_not_found.")]


@dlq_app.command("list")
def dlq_list(reason: Reason = None, since: Since = None, limit: int = 100) -> None:
    """List dead letters not yet replayed, newest first."""
    rows = asyncio.run(
        with_connection(
            settings_from_env().database_url,
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
        with_connection(
            settings_from_env().database_url, lambda conn: get_dead_letter(conn, event_id)
        )
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
    settings = settings_from_env()
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
        replayed: list[UUID] = await with_connection(
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
