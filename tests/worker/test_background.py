"""Work outside an event's transaction, on real PostgreSQL (and the real worker where a task is
involved): the bounded visitor backfill and its follow-up task, the retention purge; and the
junk-phone probe through the whole stack."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings
from tests.support.messages import envelope
from tests.support.processes import WorkerProcess
from tests.support.tenants import Tenant
from worker.background import purge_expired
from worker.unit_of_work import commit_batch

WAIT = {"Prefer": "wait=20"}
EVENTS = "/api/partner/events"


async def visitor_events(engine: AsyncEngine, tenant: Tenant, visitor: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT person_id IS NULL, count(*) FROM events"
                " WHERE tenant_id = :t AND visitor_id = :v GROUP BY 1"
            ),
            {"t": tenant.id, "v": visitor},
        )
        counts = {("anonymous" if anon else "attached"): n for anon, n in rows}
    return {"anonymous": counts.get("anonymous", 0), "attached": counts.get("attached", 0)}


async def test_a_crawler_history_is_attached_after_the_lead_is_answered(
    client: httpx.AsyncClient, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    # More anonymous history than one transaction attaches (1000 by default).
    visitor = f"crawler-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (id, tenant_id, visitor_id, event_type, occurred_at,"
                " received_at, created_at, was_person_created)"
                " SELECT gen_random_uuid(), :t, :v, 'page_view', now() - make_interval(secs => g),"
                " now(), now(), false FROM generate_series(1, 2500) AS g"
            ),
            {"t": tenant.id, "v": visitor},
        )
    lead = await client.post(
        EVENTS,
        headers=WAIT,
        json={"type": "form_submission", "visitorId": visitor, "person": {"emails": ["c@x.io"]}},
    )
    assert lead.status_code == 201, lead.text
    person_id = lead.json()["person"]["id"]
    # Answered after its own transaction, which attached at most the bound (newest first).
    assert (await visitor_events(engine, tenant, visitor))["attached"] >= 1000

    for _ in range(600):
        counts = await visitor_events(engine, tenant, visitor)
        if counts["anonymous"] == 0:
            break
        await asyncio.sleep(0.1)
    # Every event attached, to the lead's person, and none stored twice.
    assert counts == {"anonymous": 0, "attached": 2501}
    async with engine.connect() as conn:
        owners = await conn.execute(
            text("SELECT DISTINCT person_id FROM events WHERE tenant_id = :t AND visitor_id = :v"),
            {"t": tenant.id, "v": visitor},
        )
        assert [str(p) for (p,) in owners] == [person_id]
    runs = [
        line
        for line in worker.log.read_text().splitlines()
        if '"backfill.run"' in line and str(tenant.id) in line
    ]
    # The follow-up task ran (1000, then 500 rows: it re-sent itself once).
    assert [json.loads(line)["more"] for line in runs] == [True, False]


async def test_a_placeholder_phone_neither_merges_nor_discloses(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    alice = await client.post(
        EVENTS,
        headers=WAIT,
        json={
            "type": "form_submission",
            "person": {
                "firstName": "Alice",
                "emails": ["alice.smith@example.com"],
                "phones": ["000-000-0000"],
            },
        },
    )
    mallory = await client.post(
        EVENTS,
        headers=WAIT,
        json={
            "type": "form_submission",
            "person": {
                "firstName": "Mallory",
                "emails": ["mallory@evil.example"],
                "phones": ["(000) 000-0000"],
            },
        },
    )
    assert (alice.status_code, mallory.status_code) == (201, 201), mallory.text
    answer = mallory.json()
    assert answer["wasPersonCreated"] is True and "matchConflict" not in answer
    assert answer["person"]["id"] != alice.json()["person"]["id"]
    assert "alice" not in mallory.text.lower()
    assert answer["person"]["emails"] == [{"value": "mallory@evil.example", "isPrimary": True}]
    assert answer["person"]["phones"] == [
        {"value": "+10000000000", "isPrimary": False, "isVerified": False}
    ]
    # Alice is unchanged: nothing of Mallory's was added to her.
    found = await client.get("/api/partner/people", params={"email": "alice.smith@example.com"})
    assert found.json()["emails"] == [{"value": "alice.smith@example.com", "isPrimary": True}]
    assert found.json()["phones"] == [
        {"value": "+10000000000", "isPrimary": False, "isVerified": False}
    ]


async def test_expired_side_rows_are_purged_in_bounded_runs_and_a_key_is_then_new(
    engine: AsyncEngine, tenant: Tenant, settings: Settings
) -> None:
    now = datetime.now(UTC)
    small = settings.model_copy(update={"purge_rows_per_run": 2})
    keyed = [
        envelope(tenant.id, {"type": "page_view", "visitorId": "v"}, idempotency_key=f"k{i}")
        for i in range(5)
    ]
    await commit_batch(engine, keyed)
    async with engine.begin() as conn:
        # Three of the keys and three dead letters are older than their retention.
        old_key = now - timedelta(seconds=settings.idempotency_ttl_seconds + 60)
        await conn.execute(
            text(
                "UPDATE idempotency_keys SET created_at = :at"
                " WHERE tenant_id = :t AND key IN ('k0', 'k1', 'k2')"
            ),
            {"t": tenant.id, "at": old_key},
        )
        for i, age in enumerate([10**9, 10**9, 10**9, 60]):
            await conn.execute(
                text(
                    "INSERT INTO dead_letters (event_id, tenant_id, reason, problem, envelope,"
                    " failed_at) VALUES (:id, :t, 'test', '{}', '{}', :at)"
                ),
                {"id": uuid.uuid4(), "t": tenant.id, "at": now - timedelta(seconds=age + i)},
            )

    async def left() -> tuple[int, int]:
        async with engine.connect() as conn:
            keys = await conn.execute(
                text("SELECT count(*) FROM idempotency_keys WHERE tenant_id = :t"), {"t": tenant.id}
            )
            dead = await conn.execute(
                text("SELECT count(*) FROM dead_letters WHERE tenant_id = :t"), {"t": tenant.id}
            )
            return keys.scalar_one(), dead.scalar_one()

    # At most two rows of each table a run (a worker's own purge may take a turn meanwhile).
    runs = []
    while not runs or any(runs[-1].values()):
        runs.append(await purge_expired(engine, small, now))
        assert max(runs[-1].values()) <= 2 and len(runs) < 10
    assert len(runs) >= 3  # three expired rows each: two runs at least, then one with none
    assert await left() == (2, 1)  # what has not expired stays

    # A purged key reused (as the API allows once its own window is over) is a new event; a
    # key still kept is a replay of its first event.
    reused = envelope(tenant.id, {"type": "page_view", "visitorId": "v"}, idempotency_key="k0")
    replay = envelope(tenant.id, {"type": "page_view", "visitorId": "v"}, idempotency_key="k4")
    result = await commit_batch(engine, [reused, replay])
    assert (result.created_events, result.replayed_events) == (1, 1)
    assert result.outcomes[reused.id].body["event"]["id"] == str(reused.id)
    assert result.outcomes[replay.id].body["event"]["id"] == str(keyed[4].id)
