"""The dead-letter table: events that cannot succeed as sent, kept for inspection and replay."""

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.contract.queues import Envelope, queue_for
from shared.db.locks import event_lock, lock_all
from shared.db.tables import dead_letters_t as dead_t


def _filters(*, reason: str | None, since: datetime | None, event_ids: Sequence[UUID]) -> list[Any]:
    conditions: list[Any] = [dead_t.c.replayed_at.is_(None)]
    if reason:
        conditions.append(dead_t.c.reason == reason)
    if since:
        conditions.append(dead_t.c.failed_at >= since)
    if event_ids:
        conditions.append(dead_t.c.event_id.in_(event_ids))
    return conditions


async def list_dead_letters(
    conn: AsyncConnection,
    *,
    reason: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> Sequence[Row[Any]]:
    """Dead letters not yet replayed, newest first."""
    query = (
        select(dead_t)
        .where(*_filters(reason=reason, since=since, event_ids=()))
        .order_by(dead_t.c.failed_at.desc())
        .limit(limit)
    )
    return (await conn.execute(query)).all()


async def get_dead_letter(conn: AsyncConnection, event_id: UUID) -> Row[Any] | None:
    return (await conn.execute(select(dead_t).where(dead_t.c.event_id == event_id))).first()


async def replay_dead_letters(
    conn: AsyncConnection,
    publish: Callable[[dict[str, list[Envelope]]], Awaitable[None]],
    *,
    reason: str | None = None,
    since: datetime | None = None,
    event_ids: Sequence[UUID] = (),
) -> list[UUID]:
    """Queue the matching dead letters again and mark them replayed, in the caller's transaction;
    one whose envelope does not validate is left as it is.

    `publish` is a broker writer's `write` without its deadline (KombuWriter, as in the API:
    markers first, then the messages). The events' locks are held until the caller commits, so
    a worker that receives a replayed event before the commit waits for it, then sees it marked
    replayed and processes it.
    """
    conditions = _filters(reason=reason, since=since, event_ids=event_ids)
    ids = (await conn.execute(select(dead_t.c.event_id).where(*conditions))).scalars().all()
    if not ids:
        return []
    await lock_all(conn, (event_lock(i) for i in ids))
    rows = await conn.execute(
        update(dead_t)
        .where(dead_t.c.event_id.in_(ids), dead_t.c.replayed_at.is_(None))
        .values(replayed_at=datetime.now().astimezone())
        .returning(dead_t.c.event_id, dead_t.c.envelope)
    )
    envelopes, unreplayable = [], []
    for row in rows:
        try:
            envelopes.append(Envelope.model_validate(row.envelope))
        except ValidationError:
            # Kept as a worker found it (malformed): queued again it would only fail again.
            unreplayable.append(row.event_id)
    if unreplayable:
        await conn.execute(
            update(dead_t).where(dead_t.c.event_id.in_(unreplayable)).values(replayed_at=None)
        )
    by_queue: dict[str, list[Envelope]] = {}
    for envelope in envelopes:
        by_queue.setdefault(queue_for(str(envelope.payload.get("type"))), []).append(envelope)
    await publish(by_queue)
    return [e.id for e in envelopes]
