"""The task: a malformed envelope or a bug never drops a message, and what its retries' messages
show of the events (Flower shows it)."""

import asyncio
import base64
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker.wire import task_message
from shared.contract.queues import Envelope
from shared.db.tables import DeadLetter
from shared.settings import Settings
from tests.support.faulty_worker import FAULTY_WORKER
from tests.support.messages import envelope, message, push, totals, wait_announced, wait_outcomes
from tests.support.processes import WorkerProcess, start_worker, stop
from tests.support.redis_dbs import PIPELINE_OWN_WORKER, redis_url_with_db
from tests.support.tenants import Tenant


async def _logged(worker: WorkerProcess, found: Callable[[str], bool], what: str) -> None:
    """Wait until the worker's log satisfies `found` (pool processes write it in their time)."""
    deadline = asyncio.get_running_loop().time() + 10
    while not found(worker.log.read_text(errors="replace")):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the worker never logged {what}")
        await asyncio.sleep(0.05)


async def _dead_letters(engine: AsyncEngine, tenant: Tenant) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(DeadLetter.event_id, DeadLetter.reason, DeadLetter.envelope).where(
                DeadLetter.tenant_id == tenant.id
            )
        )
        return {str(r.event_id): {"reason": r.reason, "envelope": r.envelope} for r in rows}


def _inquiry(tenant: Tenant) -> Envelope:
    return envelope(tenant.id, {"type": "inquiry", "visitorId": "v-1"})


async def test_malformed_envelopes_are_dead_lettered_and_their_neighbours_stored(
    worker: WorkerProcess, settings: Settings, engine: AsyncEngine, tenant: Tenant
) -> None:
    broker = redis.Redis.from_url(settings.redis_url)
    good = [
        envelope(tenant.id, {"type": "inquiry", "person": {"emails": [f"good{i}@example.com"]}})
        for i in range(2)
    ]
    named = [_inquiry(tenant) for _ in range(2)]
    bad_time = {**named[0].to_wire(), "receivedAt": "yesterday"}
    not_object = {**named[1].to_wire(), "payload": ["not", "an", "object"]}
    no_id = {**_inquiry(tenant).to_wire(), "id": "x", "payload": "text"}
    no_tenant = _inquiry(tenant).to_wire()
    del no_tenant["tenantId"]
    wires = [good[0].to_wire(), bad_time, no_tenant, not_object, no_id, good[1].to_wire()]
    raw = task_message("leads", wires)

    push(broker, ("leads", raw), markers=[*good, *named])
    outcomes = await wait_outcomes(broker, engine, [e.id for e in [*good, *named]], timeout=60)

    assert [outcomes[e.id].status for e in good] == ["processed", "processed"]
    assert [(outcomes[e.id].status, outcomes[e.id].http_status) for e in named] == [
        ("failed", 422),
        ("failed", 422),
    ]
    assert (await totals(engine, tenant.id))["events"] == 2
    dead = await _dead_letters(engine, tenant)
    assert {d["reason"] for d in dead.values()} == {"malformed_envelope"}
    # Each kept as it was queued; the one without an id under an id of its own.
    assert dead.pop(str(named[0].id))["envelope"] == bad_time
    assert dead.pop(str(named[1].id))["envelope"] == not_object
    assert [d["envelope"] for d in dead.values()] == [no_id]
    # The one without a tenant cannot be stored: the log keeps it.
    await _logged(worker, lambda log: no_tenant["id"] in log, "the envelope without a tenant")
    assert '"envelope.unstorable"' in worker.log.read_text()

    # Delivered again, nothing is stored twice: not the events, not the dead letters.
    push(broker, ("leads", raw))
    await wait_announced(broker, named[0].id, times=2)
    assert (await totals(engine, tenant.id))["events"] == 2
    assert len(await _dead_letters(engine, tenant)) == 3


async def test_a_bug_outside_the_per_event_isolation_dead_letters_the_batch(
    service_env: dict[str, str], engine: AsyncEngine, tenant: Tenant, tmp_path: Path
) -> None:
    own_redis = redis_url_with_db(service_env["LEADSTREAM_REDIS_URL"], PIPELINE_OWN_WORKER)
    broker = redis.Redis.from_url(own_redis)
    broker.flushdb()
    env = {**service_env, "LEADSTREAM_REDIS_URL": own_redis, "LEADSTREAM_TEST_COMMIT_BUG": "1"}
    worker = start_worker(env, tmp_path / "worker.log", concurrency=1, app=FAULTY_WORKER)
    try:
        events = [_inquiry(tenant) for _ in range(3)]
        push(broker, ("leads", message(events)), markers=events)
        outcomes = await wait_outcomes(broker, engine, [e.id for e in events], timeout=60)
        # Acknowledged once dead-lettered: neither dropped nor left for redelivery. The ack
        # follows the task's return (acks_late), a moment after its log line.
        await _logged(worker, lambda log: '"batch.processed"' in log, "the batch processed")
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            left = broker.llen("leads") + broker.hlen("unacked")
            if not left or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        stop(worker.process)
        broker.flushdb()
    assert {(o.status, o.http_status) for o in outcomes.values()} == {("failed", 500)}
    dead = await _dead_letters(engine, tenant)
    assert sorted(dead) == sorted(str(e.id) for e in events)
    assert {d["reason"] for d in dead.values()} == {"processing_error"}
    assert (await totals(engine, tenant.id))["events"] == 0
    assert '"batch.failed"' in worker.log.read_text()
    assert left == 0


def _record_pushes(url: str, into: list[str], until: str) -> threading.Thread:
    """Record every message LPUSHed to the leads queue on this Redis (MONITOR), until a client
    sends ECHO `until`."""
    client = redis.Redis.from_url(url, socket_timeout=None)  # redis-py would give up in 5 s

    def record() -> None:
        with client.monitor() as monitor:
            while True:
                command = monitor.next_command()["command"]
                if command == f"ECHO {until}":
                    return
                if command.startswith("LPUSH leads "):
                    into.append(command.removeprefix("LPUSH leads "))

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


async def test_a_retried_message_shows_a_count_of_envelopes_never_their_content(
    service_env: dict[str, str], engine: AsyncEngine, tenant: Tenant, tmp_path: Path
) -> None:
    marker = f"retried_{uuid.uuid4().hex[:8]}"
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
    own_redis = redis_url_with_db(service_env["LEADSTREAM_REDIS_URL"], PIPELINE_OWN_WORKER)
    broker = redis.Redis.from_url(own_redis)
    broker.flushdb()
    pushed: list[str] = []
    done = f"done-{marker}"
    recorder = _record_pushes(own_redis, pushed, until=done)
    env = {**service_env, "LEADSTREAM_REDIS_URL": own_redis, "LEADSTREAM_TASK_MAX_RETRIES": "2"}
    worker = start_worker(env, tmp_path / "worker.log", concurrency=1)
    try:
        e = envelope(
            tenant.id,
            {"type": "inquiry", "person": {"emails": ["private@example.com"]}, "message": marker},
        )
        push(broker, ("leads", message([e])), markers=[e])
        await wait_outcomes(broker, engine, [e.id], timeout=60)
    finally:
        broker.echo(done)
        recorder.join(timeout=10)
        stop(worker.process)
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {marker} ON events"))
            await conn.execute(text(f"DROP FUNCTION {marker}()"))
        broker.flushdb()
    retries = []
    for raw in pushed:
        sent = orjson.loads(raw)
        if sent["headers"]["retries"] > 0:
            retries.append(sent)
    assert len(retries) == 2, pushed
    for sent in retries:
        assert sent["headers"]["argsrepr"] == "[<1 envelopes>]"
        assert sent["headers"]["kwargsrepr"] == "{}"
        # The events themselves are still in the body, for the worker.
        assert b"private@example.com" in base64.b64decode(sent["body"])
