"""Concurrency and redelivery through the real Celery worker (two processes) on real services."""

import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contract.outcomes import event_key
from shared.db.tables import Company, DeadLetter, Event, Person, PersonEmail, PersonExternalId
from shared.settings import Settings
from tests.support.messages import (
    envelope,
    message,
    push,
    totals,
    wait_announced,
    wait_outcomes,
)
from tests.support.processes import BIN, REPO, WorkerProcess, start_worker, stop
from tests.support.redis_dbs import PIPELINE_OWN_WORKER, redis_url_with_db
from tests.support.tenants import Tenant


async def external_ids(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(PersonExternalId.value, PersonExternalId.person_id).where(
                PersonExternalId.tenant_id == tenant_id
            )
        )
        return {r.value: str(r.person_id) for r in rows}


@pytest.fixture
def broker(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def worker_pids(worker: WorkerProcess) -> set[int]:
    """Which worker processes logged a batch. The processes share the log file, so a line may
    hold the start of another process's: only the pid is read, not the whole line as JSON."""
    return {
        int(match.group(1))
        for line in worker.log.read_text().splitlines()
        if '"batch.processed"' in line and (match := re.search(r'"pid": ?(\d+)', line))
    }


async def test_fifty_events_for_one_new_email_make_one_person(
    worker: WorkerProcess, broker: redis.Redis, engine: AsyncEngine, tenant: Tenant
) -> None:
    payload = {"type": "page_view", "person": {"emails": ["race@example.com"]}}
    envelopes = [envelope(tenant.id, payload) for _ in range(50)]
    # One message each, pushed at once: both worker processes take them concurrently.
    push(broker, *[("activity", message([e])) for e in envelopes], markers=envelopes)
    outcomes = await wait_outcomes(broker, engine, [e.id for e in envelopes])

    assert {o.status for o in outcomes.values()} == {"processed"}
    assert sum(o.body["wasPersonCreated"] for o in outcomes.values()) == 1
    assert await totals(engine, tenant.id) == {
        "events": 50,
        "people": 1,
        "emails": 1,
        "companies": 0,
    }
    async with engine.connect() as conn:
        person_ids = set(
            (
                await conn.execute(select(Event.person_id).where(Event.tenant_id == tenant.id))
            ).scalars()
        )
    assert len(person_ids) == 1 and None not in person_ids
    assert len(worker_pids(worker)) >= 2


async def test_fifty_events_for_one_new_external_id_make_one_person_once(
    worker: WorkerProcess, broker: redis.Redis, engine: AsyncEngine, tenant: Tenant
) -> None:
    # Half name the app user alone, half bring an e-mail of their own to attach to it.
    envelopes = [
        envelope(
            tenant.id,
            {
                "type": "page_view",
                "person": {
                    "externalId": "app-user-7",
                    **({"emails": [f"u{i}@example.com"]} if i % 2 else {}),
                },
            },
        )
        for i in range(50)
    ]
    push(broker, *[("activity", message([e])) for e in envelopes], markers=envelopes)
    outcomes = await wait_outcomes(broker, engine, [e.id for e in envelopes])

    assert {o.status for o in outcomes.values()} == {"processed"}
    assert sum(o.body["wasPersonCreated"] for o in outcomes.values()) == 1
    assert {o.body["person"]["externalId"] for o in outcomes.values()} == {"app-user-7"}
    expected = {"events": 50, "people": 1, "emails": 25, "companies": 0}
    assert await totals(engine, tenant.id) == expected
    assert await external_ids(engine, tenant.id) == {
        "app-user-7": outcomes[envelopes[0].id].body["person"]["id"]
    }
    assert len(worker_pids(worker)) >= 2

    # Every message delivered again, all at once: each re-announces its outcome, adds nothing.
    push(broker, *[("activity", message([e])) for e in envelopes])
    for e in envelopes:
        await wait_announced(broker, e.id, 2)
    assert await wait_outcomes(broker, engine, [e.id for e in envelopes]) == outcomes
    assert await totals(engine, tenant.id) == expected
    assert len(await external_ids(engine, tenant.id)) == 1


async def test_fifty_events_for_one_new_company_make_one_company(
    worker: WorkerProcess, broker: redis.Redis, engine: AsyncEngine, tenant: Tenant
) -> None:
    spellings = ["Globex", "globex", " GLOBEX ", "Globex  "]
    envelopes = [
        envelope(
            tenant.id,
            {
                "type": "form_submission",
                "person": {"emails": [f"employee{i}@globex.example.com"]},
                "company": {"name": spellings[i % len(spellings)]},
            },
        )
        for i in range(50)
    ]
    push(broker, *[("leads", message([e])) for e in envelopes], markers=envelopes)
    outcomes = await wait_outcomes(broker, engine, [e.id for e in envelopes])

    assert sum(o.body["wasCompanyCreated"] for o in outcomes.values()) == 1
    assert await totals(engine, tenant.id) == {
        "events": 50,
        "people": 50,
        "emails": 50,
        "companies": 1,
    }
    async with engine.connect() as conn:
        company_ids = set(
            (
                await conn.execute(select(Person.company_id).where(Person.tenant_id == tenant.id))
            ).scalars()
        )
        name = (
            await conn.execute(select(Company.name).where(Company.tenant_id == tenant.id))
        ).scalar_one()
    assert len(company_ids) == 1 and None not in company_ids
    assert name in {"Globex", "GLOBEX", "globex"}


async def test_a_message_delivered_twice_stores_one_event(
    worker: WorkerProcess, broker: redis.Redis, engine: AsyncEngine, tenant: Tenant
) -> None:
    payload = {
        "type": "form_submission",
        "person": {"emails": ["twice@example.com"]},
        "company": {"name": "Twice Inc"},
    }
    e = envelope(tenant.id, payload)
    body = message([e])
    push(broker, ("leads", body), ("leads", body), markers=[e])  # consumed at once by two processes
    first = (await wait_outcomes(broker, engine, [e.id]))[e.id]
    assert first.status == "processed" and first.http_status == 201
    await wait_announced(broker, e.id, 2)
    push(broker, ("leads", body))  # and once more, later: it re-announces the stored outcome
    await wait_announced(broker, e.id, 3)
    assert broker.exists(event_key(e.id)) == 0  # no marker outlives the commit
    again = (await wait_outcomes(broker, engine, [e.id]))[e.id]
    assert again == first
    assert await totals(engine, tenant.id) == {
        "events": 1,
        "people": 1,
        "emails": 1,
        "companies": 1,
    }


@pytest.fixture
async def refusing_trigger(engine: AsyncEngine) -> AsyncIterator[str]:
    """A real database-side rejection of one event (what a constraint or a bug would do)."""
    marker = f"refuse-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION {marker.replace("-", "_")}() RETURNS trigger AS $$
            BEGIN
              IF NEW.message = '{marker}' THEN RAISE EXCEPTION 'refused by test trigger'; END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {marker.replace('-', '_')} BEFORE INSERT ON events FOR EACH ROW "
                f"EXECUTE FUNCTION {marker.replace('-', '_')}()"
            )
        )
    yield marker
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TRIGGER IF EXISTS {marker.replace('-', '_')} ON events"))
        await conn.execute(text(f"DROP FUNCTION {marker.replace('-', '_')}()"))


async def test_a_poison_event_fails_alone_and_its_batch_commits(
    worker: WorkerProcess,
    broker: redis.Redis,
    engine: AsyncEngine,
    tenant: Tenant,
    refusing_trigger: str,
) -> None:
    good = [
        envelope(tenant.id, {"type": "page_view", "person": {"emails": [f"ok{i}@example.com"]}})
        for i in range(5)
    ]
    poison = envelope(
        tenant.id, {"type": "page_view", "visitorId": "v", "message": refusing_trigger}
    )
    batch = [*good[:2], poison, *good[2:]]
    push(broker, ("activity", message(batch)), markers=batch)
    outcomes = await wait_outcomes(broker, engine, [e.id for e in batch])

    assert outcomes[poison.id].status == "failed"
    assert outcomes[poison.id].http_status == 422
    assert re.search("rejected", outcomes[poison.id].body["type"])
    assert all(outcomes[e.id].status == "processed" for e in good)
    assert (await totals(engine, tenant.id))["events"] == 5


async def test_person_id_of_another_tenant_is_not_found(
    worker: WorkerProcess,
    broker: redis.Redis,
    engine: AsyncEngine,
    tenant: Tenant,
    settings: Settings,
) -> None:
    from tests.support.tenants import make_tenant

    other = await make_tenant(engine, settings)
    theirs = envelope(
        other.id, {"type": "form_submission", "person": {"emails": ["b@example.com"]}}
    )
    push(broker, ("leads", message([theirs])), markers=[theirs])
    their_outcome = (await wait_outcomes(broker, engine, [theirs.id]))[theirs.id]
    their_person = their_outcome.body["person"]["id"]

    ours = envelope(tenant.id, {"type": "page_view", "personId": their_person})
    push(broker, ("activity", message([ours])), markers=[ours])
    outcome = (await wait_outcomes(broker, engine, [ours.id]))[ours.id]
    assert outcome.status == "failed" and outcome.http_status == 404
    assert outcome.body["title"] == "Person not found"
    assert (await totals(engine, tenant.id))["events"] == 0
    async with engine.connect() as conn:
        owners = (
            (
                await conn.execute(
                    select(PersonEmail.tenant_id).where(PersonEmail.value == "b@example.com")
                )
            )
            .scalars()
            .all()
        )
    assert other.id in owners and tenant.id not in owners


async def test_dead_letters_are_listed_and_replayed_once_the_cause_is_fixed(
    worker: WorkerProcess,
    broker: redis.Redis,
    engine: AsyncEngine,
    tenant: Tenant,
    refusing_trigger: str,
    service_env: dict[str, str],
) -> None:
    e = envelope(
        tenant.id,
        {"type": "inquiry", "person": {"emails": ["dlq@example.com"]}, "message": refusing_trigger},
    )
    push(broker, ("leads", message([e])), markers=[e])
    assert (await wait_outcomes(broker, engine, [e.id]))[e.id].status == "failed"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "leadstream"), "dlq", *args],
            env=service_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    assert str(e.id) in cli("list", "--reason", "rejected_by_database").stdout
    shown = json.loads(cli("show", str(e.id)).stdout)
    assert shown["envelope"]["payload"]["message"] == refusing_trigger
    async with engine.begin() as conn:  # the fix
        await conn.execute(text(f"DROP TRIGGER {refusing_trigger.replace('-', '_')} ON events"))
    assert cli("replay", str(e.id)).stdout.split() == [str(e.id)]

    outcome = (await wait_outcomes(broker, engine, [e.id]))[e.id]
    assert outcome.status == "processed" and outcome.http_status == 201
    assert await totals(engine, tenant.id) == {
        "events": 1,
        "people": 1,
        "emails": 1,
        "companies": 0,
    }
    assert str(e.id) not in cli("list").stdout
    assert cli("replay", str(e.id)).stdout.split() == []  # nothing left to replay


async def test_a_transient_failure_that_persists_ends_as_a_dead_letter(
    service_env: dict[str, str], engine: AsyncEngine, tenant: Tenant, tmp_path: Path
) -> None:
    """Retries are capped: then the events are parked as replayable dead letters, not dropped."""
    marker = f"contended_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION {marker}() RETURNS trigger AS $$
            BEGIN
              IF NEW.message = '{marker}' THEN
                RAISE EXCEPTION 'lock not available (test)' USING ERRCODE = '55P03';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {marker} BEFORE INSERT ON events "
                f"FOR EACH ROW EXECUTE FUNCTION {marker}()"
            )
        )
    # A worker of its own, on a Redis db of its own, that gives up after one retry.
    own_redis = redis_url_with_db(service_env["LEADSTREAM_REDIS_URL"], PIPELINE_OWN_WORKER)
    broker = redis.Redis.from_url(own_redis)
    broker.flushdb()
    env = {**service_env, "LEADSTREAM_REDIS_URL": own_redis, "LEADSTREAM_TASK_MAX_RETRIES": "1"}
    worker = start_worker(env, tmp_path / "worker.log", concurrency=1)
    try:
        e = envelope(
            tenant.id,
            {"type": "inquiry", "person": {"emails": ["stuck@example.com"]}, "message": marker},
        )
        push(broker, ("leads", message([e])), markers=[e])
        outcome = (await wait_outcomes(broker, engine, [e.id], timeout=60))[e.id]
    finally:
        stop(worker.process)
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {marker} ON events"))
            await conn.execute(text(f"DROP FUNCTION {marker}()"))
        broker.flushdb()
    assert outcome.status == "failed" and outcome.http_status == 503
    assert outcome.body["type"].endswith("/retries-exhausted")
    log = worker.log.read_text()
    assert '"task.retry"' in log  # it was retried before giving up
    async with engine.connect() as conn:
        reason = (
            await conn.execute(select(DeadLetter.reason).where(DeadLetter.event_id == e.id))
        ).scalar_one()
    assert reason == "retries_exhausted"
    assert (await totals(engine, tenant.id))["events"] == 0
