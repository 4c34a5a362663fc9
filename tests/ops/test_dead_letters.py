"""Replaying dead letters: through the API's writer, markers first, all or nothing."""

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ops.dead_letters import dead_t, replay_dead_letters
from ops.dead_letters_cli import _replay
from shared.broker.writers import QueueUnavailableError
from shared.contract.outcomes import event_key
from shared.contract.queues import Envelope
from shared.settings import Settings
from tests.support.messages import envelope
from tests.support.tenants import Tenant


async def _dead_letters(engine: AsyncEngine, *envelopes: Envelope) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(dead_t),
            [
                {
                    "event_id": e.id,
                    "tenant_id": e.tenant_id,
                    "reason": "rejected_by_database",
                    "problem": {"title": "test"},
                    "envelope": e.model_dump(mode="json"),
                    "failed_at": datetime.now(UTC),
                }
                for e in envelopes
            ],
        )


async def _replayed_at(engine: AsyncEngine, event_id: uuid.UUID) -> datetime | None:
    async with engine.connect() as conn:
        query = select(dead_t.c.replayed_at).where(dead_t.c.event_id == event_id)
        replayed: datetime | None = (await conn.execute(query)).scalar_one()
    return replayed


async def test_replay_publishes_each_queue_once_and_marks_the_letters(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    lead = envelope(tenant.id, {"type": "inquiry", "person": {"emails": ["r@example.com"]}})
    views = [envelope(tenant.id, {"type": "page_view", "visitorId": "v"}) for _ in range(2)]
    await _dead_letters(engine, lead, *views)
    published: list[dict[str, list[uuid.UUID]]] = []

    async def publish(by_queue: dict[str, list[Envelope]]) -> None:
        published.append({q: sorted(e.id for e in queued) for q, queued in by_queue.items()})

    ids = [lead.id, *(v.id for v in views)]
    async with engine.begin() as conn:
        replayed = await replay_dead_letters(conn, publish, event_ids=ids)
    assert sorted(replayed) == sorted(ids)
    assert published == [{"leads": [lead.id], "activity": sorted(v.id for v in views)}]
    assert await _replayed_at(engine, lead.id) is not None
    async with engine.begin() as conn:
        assert await replay_dead_letters(conn, publish, event_ids=ids) == []
    assert len(published) == 1


async def test_a_replay_the_broker_refuses_changes_nothing(
    engine: AsyncEngine, tenant: Tenant, settings: Settings
) -> None:
    """No marker says "queued" (the failure stays readable) and the letter stays replayable."""
    e = envelope(tenant.id, {"type": "inquiry", "person": {"emails": ["refused@example.com"]}})
    await _dead_letters(engine, e)
    refusing: dict[str, Any] = {"broker_url": "amqp://guest:guest@127.0.0.1:1//"}
    with pytest.raises(QueueUnavailableError):
        await _replay(
            settings.model_copy(update=refusing), reason=None, since=None, event_ids=[e.id]
        )
    assert redis.Redis.from_url(settings.redis_url).exists(event_key(e.id)) == 0
    assert await _replayed_at(engine, e.id) is None


async def test_replay_leaves_a_malformed_envelope_as_it_was(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    good = envelope(tenant.id, {"type": "inquiry", "person": {"emails": ["ok@example.com"]}})
    malformed = envelope(tenant.id, {"type": "inquiry", "visitorId": "v"})
    await _dead_letters(engine, good, malformed)
    async with engine.begin() as conn:
        # As the worker stores one: the envelope as queued, which does not validate.
        await conn.execute(
            dead_t.update()
            .where(dead_t.c.event_id == malformed.id)
            .values(envelope={**malformed.to_wire(), "receivedAt": "yesterday"})
        )
    published: list[uuid.UUID] = []

    async def publish(by_queue: dict[str, list[Envelope]]) -> None:
        published.extend(e.id for queued in by_queue.values() for e in queued)

    async with engine.begin() as conn:
        replayed = await replay_dead_letters(conn, publish, event_ids=[good.id, malformed.id])
    assert replayed == published == [good.id]
    assert await _replayed_at(engine, good.id) is not None
    assert await _replayed_at(engine, malformed.id) is None
